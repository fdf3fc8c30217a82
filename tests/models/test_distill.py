"""models/distill.py: the soft-target loss, a frozen teacher kept out of checkpoints and shared by
the EMA's copy, and the teachers refused in one line."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imgcls.models.distill import Teacher, build_teacher
from imgcls.train import train
from imgcls.utils.errors import UserError
from tests.data_factory import cache_torchvision_weights, teacher_checkpoint

DIGITS = [str(d) for d in range(10)]
DIGITS_NORM = ([0.305] * 3, [0.323] * 3)


def test_the_loss_blends_the_usual_one_with_the_softened_kl() -> None:
    torch.manual_seed(0)
    teacher_net = nn.Linear(4, 3)
    images, logits, usual = torch.randn(5, 4), torch.randn(5, 3), torch.rand(5)
    target = teacher_net(images).detach()
    t = 2.0
    expected_soft = (
        (F.softmax(target / t, 1) * (F.log_softmax(target / t, 1) - F.log_softmax(logits / t, 1)))
        .sum(1)
        .mul(t * t)
    )
    blended = Teacher(teacher_net, alpha=0.3, temperature=t).losses(images, logits, usual)
    torch.testing.assert_close(blended, 0.7 * usual + 0.3 * expected_soft)
    plain = Teacher(teacher_net, alpha=0.0, temperature=t).losses(images, logits, usual)
    torch.testing.assert_close(plain, usual)
    same = Teacher(teacher_net, alpha=1.0, temperature=1.0).losses(images, target, usual)
    torch.testing.assert_close(same, torch.zeros(5), atol=1e-6, rtol=0)
    assert not teacher_net.training  # in eval mode
    assert not any(p.requires_grad for p in teacher_net.parameters())


class Untouchable(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the teacher ran")


def test_at_alpha_0_the_teacher_is_not_run() -> None:
    usual = torch.rand(5)
    plain = Teacher(Untouchable(4, 3), alpha=0.0, temperature=2.0)
    assert plain.losses(torch.randn(5, 4), torch.randn(5, 3), usual) is usual


def test_the_teacher_runs_in_inference_mode_in_its_own_dtype_and_the_student_learns() -> None:
    """bf16 images (trainer.precision=bf16-true) into a float32 teacher; its logits made in
    inference mode (no autograd record), yet the student's loss backpropagates."""
    calls = []

    class Recording(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append((torch.is_inference_mode_enabled(), x.dtype))
            return super().forward(x)

    teacher = Teacher(Recording(4, 3), alpha=0.5, temperature=2.0)
    logits = torch.randn(5, 3, requires_grad=True)
    teacher.losses(torch.randn(5, 4).bfloat16(), logits, torch.rand(5)).sum().backward()
    assert calls == [(True, torch.float32)]
    assert logits.grad is not None
    assert logits.grad.abs().sum() > 0


def test_the_teacher_takes_the_students_memory_format() -> None:
    teacher = Teacher(nn.Conv2d(3, 4, 3), alpha=0.5, temperature=1.0)
    teacher.to(torch.device("cpu"), torch.channels_last)
    assert teacher.net.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_student_learns_from_our_checkpoint_which_never_enters_its_own(
    make_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = teacher_checkpoint(tmp_path / "teacher.ckpt")
    cfg = make_cfg(
        "model=cifar_quick",
        f"model.distill.teacher={ckpt}",
        "model.distill.alpha=0.5",
        "model.distill.temperature=2.0",
        "callbacks=[default,ema]",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=4",
    )
    with caplog.at_level("INFO", logger="imgcls.models.distill"):
        _, objects = train(cfg)
    model = objects["model"]
    teacher = model.teacher
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    state = {k.removeprefix("net."): v for k, v in saved.items() if k.startswith("net.")}
    for name, value in teacher.net.state_dict().items():  # frozen, in eval mode: unchanged
        assert torch.equal(value, state[name]), name
    assert not teacher.net.training
    assert copy.deepcopy(model).teacher is teacher  # the EMA's copy shares it
    written = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    kept = ("net.", "objective.")
    assert all(k.startswith(kept) for k in written["state_dict"])
    assert len([k for k in written["state_dict"] if k.startswith("net.")]) == len(state)
    assert written["hyper_parameters"]["distill"]["teacher"] == str(ckpt)
    assert f"Distilling from {ckpt} (alpha 0.5, temperature 2.0)" in caplog.text


IMAGENET_NORM = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@pytest.mark.parametrize(
    ("spec", "classes", "norm", "refusal"),
    [
        # what no setting fixes is said first: the classes, then the normalization
        ("resnet18", 10, DIGITS_NORM, "predicts 1000 classes, this run has 10"),
        ("resnet18", 1000, DIGITS_NORM, r"normalized by mean \[0.485"),
        ("resnet18:IMAGENET1K_V3", 1000, IMAGENET_NORM, "no weights 'IMAGENET1K_V3'"),
        ("resnt18", 10, IMAGENET_NORM, r"Unknown model\.distill\.teacher='resnt18'.*resnet18"),
        ("lenet", 10, IMAGENET_NORM, "our nets have no pretrained weights"),
    ],
)
def test_teachers_that_cannot_teach_this_run_are_one_line(
    spec: str, classes: int, norm: tuple, refusal: str
) -> None:
    cache_torchvision_weights("resnet18")
    names = DIGITS if classes == 10 else [f"c{i}" for i in range(classes)]
    with pytest.raises(UserError, match=refusal):
        build_teacher(spec, classes, names, norm)


def test_a_checkpoint_teacher_must_share_classes_and_normalization(tmp_path: Path) -> None:
    ckpt = str(teacher_checkpoint(tmp_path / "teacher.ckpt"))
    assert isinstance(build_teacher(ckpt, 10, DIGITS, DIGITS_NORM), nn.Module)
    with pytest.raises(UserError, match="same classes in the same order"):
        build_teacher(ckpt, 10, DIGITS[::-1], DIGITS_NORM)
    with pytest.raises(UserError, match=r"set data\.mean and data\.std"):
        build_teacher(ckpt, 10, DIGITS, ([0.5] * 3, [0.5] * 3))


@pytest.mark.parametrize(
    ("overrides", "refusal"),
    [
        (["model.distill.alpha=1.5"], r"in \[0, 1\]"),
        (["model.distill.temperature=0"], "above 0"),
    ],
)
def test_distill_values_out_of_range_fail_at_start(
    make_cfg, tmp_path: Path, overrides: list[str], refusal: str
) -> None:
    ckpt = teacher_checkpoint(tmp_path / "teacher.ckpt")
    cfg = make_cfg("model=cifar_quick", f"model.distill.teacher={ckpt}", *overrides)
    with pytest.raises(UserError, match=refusal):
        train(cfg)
