"""run/derived.py: the values that follow from others and from the machine (the lr scaled to the
global batch, cuDNN's autotuner under determinism, sync BatchNorm on CPUs, the task's metrics),
worked out without changing the config."""

import copy
from collections.abc import Callable

import pytest
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from imgcls import CONFIG_DIR
from imgcls.run.compose import compose_config, set_in_struct
from imgcls.run.derived import derived_values, device_count, task_metrics
from imgcls.utils.errors import UserError

CPU = ["trainer.accelerator=cpu"]
LINEAR = [*CPU, "optimizer.lr=0.1", "optimizer.imgcls.scale_lr=linear", "data.batch_size=64"]


@pytest.fixture(scope="module")
def train_cfg(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., DictConfig]:
    """train_cfg(*overrides) -> the train config as the command line composes it: the group
    choices composed (once per module for each set of them), then the values set."""
    composed: dict[tuple[str, ...], DictConfig] = {}

    def make(*overrides: str) -> DictConfig:
        groups = tuple(o for o in overrides if (CONFIG_DIR / o.split("=")[0]).is_dir())
        if groups not in composed:
            out = tmp_path_factory.mktemp("run")
            composed[groups] = compose_config("train", list(groups), output_dir=out)
        cfg = copy.deepcopy(composed[groups])
        for override in overrides:
            if override not in groups:
                key, value = override.lstrip("+").split("=", 1)
                set_in_struct(cfg, key, yaml.safe_load(value))
        return cfg

    return make


# -- the lr for the global batch ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "global_batch"),
    [
        ([], 64),
        (["trainer=ddp_sim"], 128),  # 2 CPU processes
        (["trainer.num_nodes=4"], 256),
        (["trainer.accumulate_grad_batches=3"], 192),
        (["trainer=ddp_sim", "trainer.num_nodes=2", "trainer.accumulate_grad_batches=2"], 512),
        (["optimizer.imgcls.reference_batch=32"], 64 * 256 // 32),  # lr is for 32 images
    ],
    ids=["one process", "devices", "nodes", "accumulation", "all three", "reference batch"],
)
def test_linear_scaling_multiplies_the_lr_by_the_global_batch_over_the_reference(
    train_cfg, overrides: list[str], global_batch: int
) -> None:
    cfg = train_cfg(*LINEAR, *overrides)
    derived = derived_values(cfg)
    assert derived["optimizer.lr"] == pytest.approx(0.1 * global_batch / 256)
    assert derived["optimizer.imgcls.scale_lr"] is None  # done: settled once, never again
    assert cfg.optimizer.lr == 0.1  # the config is left as it is: settle writes it
    assert cfg.optimizer.imgcls.scale_lr == "linear"


def test_the_lr_is_kept_without_scaling_and_a_rule_we_lack_is_refused(train_cfg) -> None:
    derived = derived_values(train_cfg(*CPU, "optimizer.lr=0.1", "data.batch_size=1024"))
    assert "optimizer.lr" not in derived
    with pytest.raises(UserError, match=r"^optimizer\.imgcls\.scale_lr must be null or 'linear', "):
        derived_values(train_cfg(*CPU, "optimizer.imgcls.scale_lr=sqrt"))


@pytest.mark.parametrize(
    ("devices", "count"), [(2, 2), ("3", 3), ([0, 1], 2), ("0,1,2", 3), ("auto", 1), (-1, 1)]
)
def test_device_count_reads_every_way_lightning_takes_devices(devices: object, count: int):
    trainer = OmegaConf.create({"accelerator": "cpu", "devices": devices})
    assert device_count(trainer) == count


# -- what the machine allows ----------------------------------------------------------------------
def test_deterministic_turns_the_autotuner_off(train_cfg) -> None:
    both = train_cfg(*CPU, "trainer.deterministic=true", "trainer.benchmark=true")
    assert derived_values(both) == {"trainer.benchmark": False}
    assert derived_values(train_cfg(*CPU, "trainer.deterministic=false")) == {}  # benchmark kept
    off = train_cfg(*CPU, "trainer.deterministic=true", "trainer.benchmark=false")
    assert derived_values(off) == {}  # nothing to change


def test_sync_batchnorm_is_off_on_the_cpu_with_a_warning(
    train_cfg, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        derived = derived_values(train_cfg("trainer=ddp_sim", "trainer.sync_batchnorm=true"))
    assert derived == {"trainer.sync_batchnorm": False}
    assert "trainer.sync_batchnorm needs CUDA devices" in caplog.text
    on_gpus = train_cfg("trainer=ddp_sim", "trainer.sync_batchnorm=true", "trainer.accelerator=gpu")
    assert "trainer.sync_batchnorm" not in derived_values(on_gpus)  # GPUs: kept


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto means the GPU where there is one")
def test_sync_batchnorm_with_auto_accelerator_on_a_machine_without_cuda(train_cfg) -> None:
    cfg = train_cfg("+trainer.sync_batchnorm=true", "trainer.accelerator=auto")
    assert derived_values(cfg)["trainer.sync_batchnorm"] is False


# -- the task's metrics ---------------------------------------------------------------------------
def test_multilabel_turns_accuracy_into_map(train_cfg) -> None:
    cfg = train_cfg("model.task=multilabel", "callbacks=[default,early_stopping]")
    assert cfg.callbacks.early_stopping.monitor == "val/acc"  # as the configs are written
    assert derived_values(cfg) == {
        "callbacks.model_checkpoint.monitor": "val/map",
        "callbacks.early_stopping.monitor": "val/map",
        "optimized_metric": "val/map_best",
    }
    assert cfg.optimized_metric == "val/acc_best"  # not written here


def test_a_score_both_tasks_log_or_no_score_is_kept(train_cfg) -> None:
    kept = [
        "model.task=multilabel",
        "callbacks.model_checkpoint.monitor=val/loss",
        "optimized_metric=val/f1_macro_best",  # multilabel logs it too
    ]
    assert task_metrics(train_cfg(*kept)) == {}
    assert task_metrics(train_cfg()) == {}  # the configs' own task
    assert task_metrics(train_cfg("optimized_metric=null")) == {}


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (
            ["model.task=multilabel", "optimized_metric=val/acc_top5_best"],
            "optimized_metric=val/acc_top5_best is not logged with model.task=multilabel: use one "
            "of val/map, val/f1_micro, val/f1_macro (or val/loss; _best for a sweep's "
            "optimized_metric).",
        ),
        (
            ["model.task=multilabel", "callbacks.model_checkpoint.monitor=val/acc_balanced"],
            "callbacks.model_checkpoint.monitor=val/acc_balanced is not logged with "
            "model.task=multilabel: use one of val/map, val/f1_micro, val/f1_macro",
        ),
        (
            ["optimized_metric=val/map_best"],
            "optimized_metric=val/map_best is not logged with model.task=multiclass: use one of "
            "val/acc, val/acc_top5, val/acc_balanced, val/f1_macro",
        ),
    ],
    ids=["multilabel, top-5", "multilabel, balanced accuracy", "multiclass, mAP"],
)
def test_a_score_only_the_other_task_logs_is_refused(
    train_cfg, overrides: list[str], said: str
) -> None:
    with pytest.raises(UserError) as err:
        derived_values(train_cfg(*overrides))
    assert str(err.value).startswith(said)
    assert "\n" not in str(err.value)
