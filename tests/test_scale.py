"""Multi-device and speed options: DDP with bf16 and channels_last, compile, lr scaling, sync
BN, and every experiment end to end."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torchvision

from imgcls import CONFIG_DIR
from imgcls.models.loading import load_classifier
from imgcls.models.nets.fast_cifar import FastCifar
from imgcls.run.derived import device_count, scaled_lr
from imgcls.train import train
from imgcls.utils.errors import UserError
from tests.data_factory import (
    cache_torchvision_weights,
    teacher_checkpoint,
    write_cifar,
    write_class_tree,
    write_imagenet,
    write_label_csv,
)
from tests.helpers import CLI_QUIET, dirs_under, run_cli
from tests.test_recipes import PUBLISHED

# the recipes copied from a source train on synthetic data in tests/test_recipes.py
EXPERIMENTS = sorted(
    p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml") if p.stem not in PUBLISHED
)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.usefixtures("fake_cifar_integrity")
def test_every_experiment_runs_one_batch(make_cfg, tmp_path: Path, experiment: str) -> None:
    overrides = [f"experiment={experiment}", "debug=fdr"]
    if "cifar10" in experiment:
        overrides.append(f"data.root={write_cifar(tmp_path / 'data', 10, per_class=5)}")
        overrides.append("data.val_size=10")
    elif experiment.startswith("resnet50_imagenet"):
        overrides += [f"data.root={write_imagenet(tmp_path / 'imagenet')}", "data.batch_size=2"]
    elif experiment == "finetune_folder":
        cache_torchvision_weights("resnet50")
        root = write_class_tree(tmp_path / "photos", ["cat", "dog"], 10)
        overrides += [f"data.root={root}", "data.batch_size=2"]
    elif experiment == "linear_probe":  # a tiny ViT from scratch, its features cached in tmp
        root = write_class_tree(tmp_path / "photos", ["cat", "dog"], 10)
        overrides += [f"data.root={root}", "model.net.name=timm/test_vit"]
        overrides += ["model.net.pretrained=false", "+model.net.img_size=224"]
        overrides.append(f"model.probe.cache_dir={tmp_path / 'cache'}")
    elif experiment == "imagenet_fake_smoke":
        overrides.append("data.batch_size=2")  # a ResNet-50 at 224 px: one batch is enough
    metrics, _ = train(make_cfg(*overrides))
    assert 0 <= metrics["test/acc"] <= 1


@pytest.mark.parametrize("callbacks", [[], ["~callbacks"]], ids=["default callbacks", "none"])
def test_data_dependent_init_whitens_fast_cifar_from_the_first_train_images(
    make_cfg, callbacks: list[str]
) -> None:
    """The whitened stem is the net's own: it holds whatever callbacks a run has."""
    cfg = make_cfg(
        "model.net.name=fast_cifar",
        "data.batch_size=16",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "test=false",
        *callbacks,
    )
    _, objects = train(cfg)
    stem = objects["model"].net[0]
    expected = FastCifar()
    expected.init_from_data(objects["datamodule"].first_train_images(5000, torch.device("cpu")))
    torch.testing.assert_close(stem.weight, expected[0].weight)  # frozen: a step leaves it


def test_linear_lr_scaling() -> None:
    assert scaled_lr(0.1, 1024, 256) == pytest.approx(0.4)
    assert device_count({"devices": [0, 3]}) == 2
    assert device_count({"devices": "0,1,2"}) == 3
    assert device_count({"accelerator": "cpu", "devices": "auto"}) == 1


def test_lr_follows_the_global_batch_and_the_config_records_it(make_cfg) -> None:
    linear = ["optimizer.imgcls.scale_lr=linear", "data.batch_size=32", "scheduler=none"]
    cfg = make_cfg("debug=fdr", *linear, "trainer.accumulate_grad_batches=2")
    _, objects = train(cfg)
    lr = 0.1 * 32 * 2 / 256
    assert objects["trainer"].optimizers[0].param_groups[0]["lr"] == pytest.approx(lr)
    assert cfg.optimizer.lr == pytest.approx(lr)  # as the run's logged config says
    assert cfg.optimizer.imgcls.scale_lr is None  # scaled once, not again from this config
    with pytest.raises(UserError, match="null or 'linear'"):
        train(make_cfg("debug=fdr", "optimizer.imgcls.scale_lr=sqrt"))


def test_channels_last_and_bf16_train_on_cpu(make_cfg) -> None:
    cfg = make_cfg(
        "model.channels_last=true",
        "trainer.precision=bf16-mixed",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1",
        "test=false",
    )
    metrics, objects = train(cfg)
    conv = objects["model"].net[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert metrics["train/loss"] == metrics["train/loss"]  # not NaN


@pytest.mark.parametrize("multilabel", [False, True], ids=["mixup", "multilabel"])
def test_a_net_held_in_bf16_trains_validates_and_tests(
    make_cfg, tmp_path: Path, multilabel: bool
) -> None:
    """trainer.precision=bf16-true: the weights are bf16, so are the batches the device
    transform makes (they leave it as float32 otherwise and the first conv refuses them)."""
    task = ["data.augment.mixup_alpha=0.2"]
    if multilabel:
        labels = write_label_csv(tmp_path / "photos", per_class=6)
        task += ["data=csv", f"data.csv={labels}", "model.task=multilabel", "data.train_crop=32"]
    cfg = make_cfg(
        "model=cifar_quick",
        "trainer.precision=bf16-true",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
        *task,
    )
    metrics, objects = train(cfg)
    assert next(objects["model"].net.parameters()).dtype == torch.bfloat16
    assert all(math.isfinite(value) for value in metrics.values())


def test_compile_wraps_nets_that_are_not_sequential(make_cfg, monkeypatch) -> None:
    """A torchvision ResNet, as users compile it (dynamo traces the real net; the eager backend
    stands in for inductor's minutes of kernel compilation on this CPU)."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net: real_compile(net, backend="eager"))
    cfg = make_cfg(
        "model=resnet18",
        "model.compile=true",
        "data.batch_size=16",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "test=false",
    )
    metrics, objects = train(cfg)
    model = objects["model"]
    assert isinstance(model._compiled_net, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(model._compiled_net._orig_mod, torchvision.models.ResNet)
    assert objects["trainer"].global_step == 2
    assert math.isfinite(metrics["train/loss"])


@pytest.mark.slow
def test_compiled_net_checkpoint_loads_without_compile(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "model=lenet",
        "model.compile=true",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
    )
    _, objects = train(cfg)
    compiled = objects["model"]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if "_orig_mod" in k]
    plain = load_classifier(tmp_path / "run" / "checkpoints" / "last.ckpt")
    images = torch.randn(4, 3, 32, 32)
    compiled.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(images), compiled(images), atol=1e-4, rtol=1e-4)
    # and a checkpoint with prefixed keys (another tool's compile) loads too
    ckpt["state_dict"] = {
        k.replace("net.", "net._orig_mod."): v for k, v in ckpt["state_dict"].items()
    }
    torch.save(ckpt, tmp_path / "prefixed.ckpt")
    prefixed = load_classifier(tmp_path / "prefixed.ckpt").eval()
    with torch.no_grad():
        torch.testing.assert_close(prefixed(images), plain(images))


@pytest.mark.slow(seconds=20)
def test_ddp_sim_bf16_channels_last_sync_bn_distill_ranks_agree(tmp_path: Path) -> None:
    teacher = teacher_checkpoint(tmp_path / "teacher.ckpt")  # each rank runs its own copy
    result = run_cli(
        "train.py",
        [
            "trainer=ddp_sim",
            f"model.distill.teacher={teacher}",
            "trainer.precision=bf16-mixed",
            "model.net.name=fast_cifar",  # its whitening stem is set on rank 0 and broadcast
            "model.channels_last=true",
            "trainer.sync_batchnorm=true",
            "trainer.max_epochs=2",
            "+trainer.limit_train_batches=5",
            # bf16 is emulated, slowly, on CPUs without AVX-512 BF16 (2.5 min on a Zen 3 at
            # batches of 128): small batches, and a few of them evaluated
            "data.batch_size=32",
            "+trainer.limit_val_batches=4",
            "+trainer.limit_test_batches=4",
            f"paths.log_dir={tmp_path}",
            *CLI_QUIET,
        ],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()  # one run dir for both processes
    rel = run.relative_to(tmp_path).as_posix()
    run_dirs = {f"{rel}/{d}" for d in (".hydra", "checkpoints", "tensorboard", "csv")}
    assert dirs_under(tmp_path) == {"train", "train/runs", rel, *run_dirs}  # nothing stray
    per_rank = {}
    for log_file in ("train.log", "train_rank1.log"):
        line = re.search(r"rank (\d) metrics: (\{.*\})", (run / log_file).read_text())
        per_rank[int(line.group(1))] = json.loads(line.group(2))
    assert set(per_rank) == {0, 1}
    assert "trainer.sync_batchnorm needs CUDA" in (run / "train.log").read_text()  # said
    assert "Distilling from" in (run / "train.log").read_text()
    for name in ("val/acc", "val/loss", "test/acc", "test/acc_top5", "train/loss"):
        assert per_rank[0][name] == pytest.approx(per_rank[1][name]), name
    assert per_rank[0]["test/acc"] > 0.15  # learning, in bf16 on two processes
