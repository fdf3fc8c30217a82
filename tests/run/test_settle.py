"""run/settle.py: the values a run derives are written into its config once, before use."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from imgcls.run.settle import data_values, settle
from imgcls.train import main as train_main
from tests.data_factory import write_cifar, write_label_csv


@pytest.mark.usefixtures("fake_cifar_integrity")
def test_settled_values_are_written_once_and_the_config_is_then_final(make_cfg) -> None:
    cfg = make_cfg(
        "experiment=cifar10_fast", "trainer.deterministic=true", "trainer.benchmark=true"
    )
    settled = settle(cfg)
    assert settled == {
        "trainer.benchmark": False,
        "optimizer.lr": pytest.approx(1.5),  # 0.375 per 256 images, at batch 1024
        "optimizer.imgcls.scale_lr": None,
    }
    assert cfg.optimizer.lr == pytest.approx(1.5)
    assert not cfg.trainer.benchmark
    assert settle(cfg) == {}  # nothing left to derive: what the run logs is what it used


def test_the_config_a_run_saves_and_shows_is_the_one_it_used(
    command, tmp_path: Path, fake_cifar_integrity
) -> None:
    """Hydra writes .hydra/config.yaml before a run derives anything: a multi-label run's
    saved metrics and a scaled lr are written back once settled (a sweep's summary sorts by
    the saved optimized_metric), and the config tree shows them too."""
    labels = write_label_csv(tmp_path / "photos", per_class=4)
    quiet = [
        "extras.print_config=true",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=1",
        "+trainer.limit_val_batches=1",
        "test=false",
        f"paths.log_dir={tmp_path}",
    ]
    run = tmp_path / "multilabel"
    command(
        train_main,
        "train.py",
        "data=csv",
        f"data.csv={labels}",
        "model.task=multilabel",
        f"hydra.run.dir={run}",
        *quiet,
    )
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert saved.optimized_metric == "val/map_best"
    assert saved.callbacks.model_checkpoint.monitor == "val/map"
    assert "monitor: val/map\n" in (run / "config_tree.log").read_text()

    write_cifar(tmp_path / "cifar")
    run = tmp_path / "fast"
    command(
        train_main,
        "train.py",
        "experiment=cifar10_fast",
        f"data.root={tmp_path / 'cifar'}",
        "data.val_size=10",
        "trainer.accelerator=cpu",
        f"hydra.run.dir={run}",
        *quiet,
    )
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert saved.optimizer.lr == pytest.approx(1.5)  # 0.375 per 256 images, at batch 1024
    assert saved.optimizer.imgcls.scale_lr is None  # done: rerunning it scales nothing again


def test_a_checkpoints_contract_is_for_evaluation_not_the_train_crop(make_cfg) -> None:
    """Evaluated or resumed, a checkpoint decides how images are evaluated; a resumed run keeps
    training at the crop it started with (torchvision_recipe: 176, where its eval crop is 224),
    while pretrained weights also set the train crop the data config leaves open."""
    cfg = make_cfg("data=folder", "data.root=/nowhere", "data.augment.preset=torchvision_recipe")
    contract = {"resize": 232, "crop": 224, "mean": [0.5] * 3, "std": [0.25] * 3}
    checkpoint = {"hyper_parameters": {"task": "multiclass", "preprocessing": contract}}
    assert data_values(cfg, checkpoint) == {
        "data.eval_resize": 232,
        "data.eval_crop": 224,
        "data.mean": [0.5] * 3,
        "data.std": [0.25] * 3,
    }
    checkpoint["hyper_parameters"]["task"] = "multilabel"
    assert data_values(cfg, checkpoint)["data.multilabel"] is True
