"""Nothing in a training step that a CUDA device would make the host wait on, traced on a CPU at
the dispatcher (tests/device_waits.py says what counts), for each way of training users take:
the default run, the fast CIFAR recipe (EMA, bf16, channels_last, test-time augmentation),
classic_imagenet's device augmentation with MixUp and CutMix on in-memory data, photos decoded
on the device (grayscale, CMYK, progressive, PNG among them), and 16-mixed precision with its
GradScaler. Validation steps are held to the same: zero.
"""

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from imgcls.run.compose import compose_config
from imgcls.train import train
from tests.data_factory import write_cifar, write_class_tree, write_label_csv, write_photo_kinds
from tests.device_waits import DeviceWaitTrace, StepTrace
from tests.helpers import decoded_on_device

TRACE = "+callbacks.trace._target_=tests.device_waits.StepTrace"


def photo_folder(root: Path) -> Path:
    write_class_tree(root, ["cat", "dog"], per_class=30)
    for name in ("cat", "dog"):
        write_photo_kinds(root / name / "kinds", size=(80, 60))
    return root


RUNS = {
    "default": lambda tmp: [],
    "cifar10_fast": lambda tmp: [
        "experiment=cifar10_fast",
        f"data.root={write_cifar(tmp / 'cifar', 10, per_class=30, test_per_class=2)}",
        "data.val_size=40",
        "data.batch_size=16",
        "+model.net.data_init_images=64",
    ],
    "in memory: classic_imagenet, augmix, erasing, repeats, mixes, weights": lambda tmp: [
        "data.augment.preset=classic_imagenet",
        "data.augment.policy=augmix",
        "data.augment.erasing=0.5",
        "data.augment.erasing_mode=pixel",
        "data.augment.repeats=2",
        "data.augment.mixup_alpha=0.2",
        "data.augment.cutmix_alpha=1.0",
        "model.class_weights=balanced",
        "model.temperature=fit",
        "model=cifar_quick",  # the data path is the point here: a light net
        "data.batch_size=16",
    ],
    "photos decoded on the device, autoaugment, erasing": lambda tmp: [
        *decoded_on_device(photo_folder(tmp / "photos"), batch_size=4),
        "data.augment.policy=autoaugment_imagenet",
        "data.augment.erasing=0.25",
        "data.sampler=balanced",  # the file loader's weighted draw
        "data.split=[0.7,0.25,0.05]",
        "optimizer.lr=0.01",  # cifar_quick has no norm layers: lr 0.1 on 4 images can diverge
    ],
    "several labels per image, mixup, cutmix, pos weights, thresholds fitted": lambda tmp: [
        "data=csv",
        f"data.csv={write_label_csv(tmp / 'labelled')}",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        "data.num_workers=0",
        "data.augment.preset=none",
        *(f"data.{size}=32" for size in ("train_crop", "eval_resize", "eval_crop")),
        "data.augment.mixup_alpha=0.2",
        "data.augment.cutmix_alpha=1.0",
        "model=cifar_quick",
        "model.task=multilabel",
        "model.class_weights=balanced",
        "model.threshold=fit",
    ],
    "16-mixed with its GradScaler": lambda tmp: [
        # Lightning turns 16-mixed into bf16 on a CPU; its plugin runs fp16 with a GradScaler
        "model=lenet",
        "trainer.precision=null",
        "trainer.plugins=[{_target_: imgcls.utils.atomic_save.AtomicCheckpointIO},"
        "{_target_: lightning.pytorch.plugins.precision.MixedPrecision,"
        " precision: 16-mixed, device: cpu}]",
    ],
}


def run_config(tmp_path: Path, *overrides: str) -> DictConfig:
    """A run as a user starts it (its progress bar and loggers included), two epochs."""
    return compose_config(
        "train",
        [
            f"paths.log_dir={tmp_path / 'logs'}",
            "extras.print_config=false",
            "trainer.max_epochs=2",
            "+trainer.limit_train_batches=13",  # the windows: steps 1-11, validation 0-3
            "+trainer.limit_val_batches=4",
            "+data.eval_batch_size=16",
            "test=false",
            *overrides,
        ],
        output_dir=tmp_path / "run",
    )


@pytest.mark.usefixtures("fake_cifar_integrity")
@pytest.mark.parametrize("name", RUNS)
def test_no_device_waits_in_training_or_validation_steps(tmp_path: Path, name: str) -> None:
    cfg = run_config(tmp_path, *RUNS[name](tmp_path), "trainer.accelerator=cpu", TRACE)
    _, objects = train(cfg)
    (trace,) = (c for c in objects["callbacks"] if isinstance(c, StepTrace))
    assert trace.steps["train"] >= 8  # the windows were reached
    assert trace.steps["val"] >= 2
    for stage, seen in trace.traces.items():
        assert seen.ops > 100  # and saw the steps' operations
        listed = "\n".join(str(w) for w in seen.waits[:3])
        assert not seen.waits, f"{len(seen.waits)} device waits in {stage} steps:\n{listed}"
    if "GradScaler" in name:  # the fused optimizer: the scaler's inf check stays on the device
        optimizer = objects["trainer"].optimizers[0]
        assert optimizer.defaults["fused"]
        assert optimizer._step_supports_amp_scaling


# -- the trace itself: each kind of wait it must see ------------------------------------------


def waits_of(step) -> list[str]:
    with DeviceWaitTrace() as trace:
        step()
    return [w.what for w in trace.waits]


def test_the_trace_sees_each_kind_of_device_wait() -> None:
    x = torch.randn(8, 3)
    assert waits_of(lambda: x.sum().item()) == ["aten._local_scalar_dense"]
    assert waits_of(lambda: bool(x.sum() > 0)) == ["aten._local_scalar_dense"]
    assert waits_of(lambda: x.tolist()) == ["Tensor.tolist"]
    assert waits_of(lambda: x[x > 0]) == ["aten.index"]
    assert waits_of(lambda: x.nonzero()) == ["aten.nonzero"]
    assert waits_of(lambda: torch.bincount(x.argmax(1))) == ["aten.bincount"]
    eye = torch.eye(3, device=x.device)
    assert waits_of(lambda: torch.linalg.inv(eye + x[:3])) == ["aten._linalg_check_errors"]
    repeats = torch.ones(8, dtype=torch.long, device=x.device)
    assert waits_of(lambda: x.repeat_interleave(repeats, dim=0)) == ["aten.repeat_interleave"]
    assert waits_of(lambda: torch.tensor([1.0, 2.0], device=x.device)) == [
        "torch.tensor(..., device=...)"
    ]
    assert waits_of(lambda: torch.as_tensor(3, device=x.device)) == [
        "torch.as_tensor(..., device=...)"
    ]
    assert waits_of(lambda: torch.tensor([1, 2]).to(x.device)) == ["to(..., device)"]
    moved = waits_of(lambda: torch.as_tensor(torch.tensor([1, 2]), device=x.device))
    assert moved == ["as_tensor(..., device)"]
    assert waits_of(lambda: x[[1, 2]]) == ["aten.index"]  # a Python list, copied to the device
    assert waits_of(lambda: x[0] + x.new_tensor([1.0, 2.0, 3.0])) == ["aten.add"]


def test_the_trace_lets_through_what_waits_for_nothing() -> None:
    x = torch.randn(8, 3)
    from imgcls.utils.machine import to_device_async

    def fine() -> None:
        torch.full((), 3.0, device=x.device) * x  # a fill kernel, no copy
        x.repeat_interleave(2, dim=0)  # repeats known on the host
        torch.where(x > 0, x, 0.0)  # a mask used without indexing
        lam = torch.distributions.Beta(torch.tensor([0.2]), torch.tensor([0.2])).sample()
        float(lam)  # host-side randomness, read on the host (MixUp's mixing weight)
        to_device_async([3, 1, 2], x.device)  # pinned, queued
        x.to(torch.bfloat16)  # a dtype, not a device

    assert waits_of(fine) == []
