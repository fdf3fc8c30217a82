"""run/checks.py: a value out of range is one line naming the key, the value and what is allowed,
before any work; only the keys a run has are checked."""

import os
import re
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from imgcls.run import checks
from imgcls.run.checks import RULES, check_values
from imgcls.train import train
from imgcls.utils.errors import UserError


def config(key: str, value: Any) -> DictConfig:
    """A config holding `key` (dotted) alone: every other key absent."""
    cfg = OmegaConf.create()
    OmegaConf.update(cfg, key, value)
    return cfg


def refusal(cfg: DictConfig) -> str:
    with pytest.raises(UserError) as err:
        check_values(cfg)
    message = str(err.value)
    assert "\n" not in message
    return message


# key, a value refused, what is allowed (RULES' own words, checked word for word)
REFUSED = [
    ("data.batch_size", 0, "a whole number >= 1 (images per device and step)"),
    ("data.batch_size", 2.5, "a whole number >= 1 (images per device and step)"),
    ("data.batch_size", True, "a whole number >= 1 (images per device and step)"),
    ("data.eval_batch_size", 0, "a whole number >= 1, or null"),
    ("data.num_workers", -1, "auto or a whole number >= 0"),
    ("data.num_workers", "many", "auto or a whole number >= 0"),
    ("data.folds", 1, "a whole number >= 2 (k-fold cross-validation), or null"),
    ("data.fold", -1, "a whole number >= 0, below data.folds"),
    ("optimizer.lr", 0, "a number > 0"),
    ("optimizer.lr", float("nan"), "a number > 0"),
    ("optimizer.lr", "0.1", "a number > 0"),
    ("optimizer.weight_decay", -1e-4, "a number >= 0"),
    ("optimizer.momentum", 1.0, "a number in [0, 1)"),
    ("model.label_smoothing", -0.1, "a number in [0, 1)"),
    ("model.class_weights", [1, 0], "null, balanced, or a list of numbers > 0, one per class"),
    ("model.class_weights", [], "null, balanced, or a list of numbers > 0, one per class"),
    ("model.class_weights", "even", "null, balanced, or a list of numbers > 0, one per class"),
    ("model.temperature", 0, "null, fit, or a number > 0"),
    ("model.temperature", "fitted", "null, fit, or a number > 0"),
    ("model.threshold", 1, "fit, or a number in (0, 1)"),
    ("model.threshold", 0, "fit, or a number in (0, 1)"),
    ("model.probe.enabled", "yes", "true or false"),
    ("model.probe.knn_k", 0, "a whole number >= 1 (nearest train images voting)"),
    ("model.probe.knn_temperature", 0, "a number > 0 (DINO's: 0.07)"),
    ("model.lora.rank", -1, "null or 0 (off), or a whole number >= 1"),
    ("model.lora.alpha", 0, "a number > 0 (the update: alpha / rank x BA)"),
    ("model.lora.dropout", 1.0, "a number in [0, 1)"),
    (
        "model.lora.targets",
        "qkv",
        "null (the net's family's layers) or a list of layer names, [attn.qkv,mlp.fc1]",
    ),
    ("trainer.max_epochs", 0, "a whole number >= 1, or -1 for no limit"),
    ("trainer.max_epochs", -2, "a whole number >= 1, or -1 for no limit"),
    ("trainer.min_epochs", -1, "a whole number >= 0, or null"),
    ("trainer.accumulate_grad_batches", 0, "a whole number >= 1"),
    ("trainer.log_every_n_steps", 0, "a whole number >= 1"),
]


@pytest.mark.parametrize(
    ("key", "value", "allowed"), REFUSED, ids=[f"{k}={v!r}" for k, v, _ in REFUSED]
)
def test_a_value_out_of_range_is_one_line_naming_key_value_and_what_is_allowed(
    key: str, value: Any, allowed: str
) -> None:
    assert refusal(config(key, value)) == f"{key}={value!r} is not allowed: {allowed}."


ALLOWED = [
    ("data.batch_size", 1),
    ("data.eval_batch_size", None),
    ("data.num_workers", "auto"),
    ("data.num_workers", 0),
    ("data.folds", None),
    ("data.fold", 0),
    ("optimizer.lr", 1e-9),
    ("optimizer.weight_decay", 0),
    ("optimizer.momentum", 0),
    ("optimizer.momentum", 0.99),
    ("model.label_smoothing", 0.0),
    ("model.class_weights", None),
    ("model.class_weights", "balanced"),
    ("model.class_weights", [0.5, 2]),
    ("model.temperature", None),
    ("model.temperature", "fit"),
    ("model.temperature", 1.5),
    ("model.threshold", "fit"),
    ("model.threshold", 0.3),
    ("model.lora.rank", None),
    ("model.lora.rank", 8),
    ("model.lora.targets", ["attn.qkv", "mlp.fc1"]),
    ("trainer.max_epochs", -1),
    ("trainer.max_epochs", 1),
    ("trainer.min_epochs", None),
    ("trainer.accumulate_grad_batches", 8),
    ("trainer.log_every_n_steps", 1),
]


@pytest.mark.parametrize(("key", "value"), ALLOWED, ids=[f"{k}={v!r}" for k, v in ALLOWED])
def test_a_value_in_range_passes(key: str, value: Any) -> None:
    check_values(config(key, value))


def test_every_rule_is_exercised_here() -> None:
    """A rule added to RULES gets a refused value above, so its line is read once at least."""
    assert {key for key, _, _ in REFUSED} == RULES.keys()


def test_absent_keys_are_not_checked(make_cfg) -> None:
    check_values(OmegaConf.create())  # nothing to check: nothing refused
    cfg = make_cfg("optimizer=adam")  # Adam takes no momentum: the rule has no value to read
    assert OmegaConf.select(cfg, "optimizer.momentum") is None
    check_values(cfg)
    check_values(make_cfg())  # the shipped defaults are all allowed
    # ??? outside data: not this run's to check (a value it never reads)
    check_values(OmegaConf.create({"optimizer": {"lr": "???"}}))


# -- folds ----------------------------------------------------------------------------------------
def test_a_fold_needs_folds_and_is_below_them() -> None:
    assert refusal(OmegaConf.create({"data": {"fold": 2}})) == (
        "data.fold=2 needs data.folds (how many folds): data.folds=5."
    )
    assert refusal(OmegaConf.create({"data": {"folds": 5, "fold": 5}})) == (
        "data.fold=5 is not allowed with data.folds=5: folds are 0 to 4."
    )
    check_values(OmegaConf.create({"data": {"folds": 5, "fold": 4}}))
    check_values(OmegaConf.create({"data": {"folds": None, "fold": 0}}))  # no k-fold
    check_values(OmegaConf.create({"data": {"folds": 3}}))  # fold 0 by default


# -- a data source's mandatory value ---------------------------------------------------------------
def test_a_data_value_left_unset_is_named(make_cfg, tmp_path) -> None:
    assert refusal(make_cfg("data=csv")) == (
        "data.csv is not set: give it on the command line, data.csv=..."
    )
    assert refusal(make_cfg("data=folder")).startswith("data.root is not set")
    check_values(make_cfg("data=csv", f"data.csv={tmp_path / 'labels.csv'}"))


# -- processes and CPUs ----------------------------------------------------------------------------
def cpu_processes(devices: Any, accelerator: str = "cpu") -> DictConfig:
    return OmegaConf.create({"trainer": {"accelerator": accelerator, "devices": devices}})


def test_more_cpu_processes_than_cpus_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "available_cpus", lambda: 2)
    assert refusal(cpu_processes(3)) == (
        "trainer.devices=3 is not allowed with trainer.accelerator=cpu on this machine: at most "
        "2 (one process per CPU)."
    )
    check_values(cpu_processes(2))  # one per CPU
    check_values(cpu_processes(3, accelerator="gpu"))  # not CPU processes
    check_values(cpu_processes("auto"))  # Lightning picks
    check_values(cpu_processes([0, 1, 2]))  # device indices: not a count of CPU processes


def test_more_cpu_processes_than_cpus_is_refused(make_cfg) -> None:
    cpus = len(os.sched_getaffinity(0))
    with pytest.raises(UserError, match=rf"trainer\.devices={cpus + 1} .* at most {cpus}"):
        train(make_cfg("trainer=ddp_sim", f"trainer.devices={cpus + 1}"))


def test_an_unseeded_job_a_launcher_starts_or_a_resume_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """seed=null draws one seed that the processes Lightning starts inherit; processes a
    launcher starts would each draw their own, and a resume another than its run's."""

    def job(seed: int | None, nodes: int = 1, ckpt_path: str | None = None) -> Any:
        trainer = {"num_nodes": nodes, "devices": 2}
        return OmegaConf.create({"seed": seed, "trainer": trainer, "ckpt_path": ckpt_path})

    launched = r"^seed=null is not allowed in a job whose processes a launcher starts"
    with pytest.raises(UserError, match=launched):
        check_values(job(None, nodes=2))
    with pytest.raises(UserError, match=r"^seed=null is not allowed with ckpt_path: .* add seed=N"):
        check_values(job(None, ckpt_path="last"))
    check_values(job(None))  # one machine, its processes started by Lightning
    check_values(job(7, nodes=2, ckpt_path="last"))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "42")  # torchrun on one machine
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match=launched):
        check_values(job(None))


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("trainer.devices", 2, r"^trainer\.devices=2 \(num_nodes=1\) is not allowed .*devices=1"),
        ("trainer.num_nodes", 2, r"^trainer\.devices=1 \(num_nodes=2\)"),
        ("model.task", "multilabel", r"^model\.task=multilabel .*one label per image"),
        ("data.augment.preset", "standard", r"un-augmented images: preset=none\.$"),
        ("data.augment.mixup_alpha", 0.2, r"^data\.augment\.mixup_alpha=0\.2 .*leave it at 0"),
        ("data.augment.policy", "ta_wide", r"^data\.augment\.policy=ta_wide"),
        ("data.augment.repeats", 3, r"^data\.augment\.repeats=3"),
        ("model.tta_flip", True, r"^model\.tta_flip=True .*through eval\.py"),
        ("model.distill.teacher", "t.ckpt", r"^model\.distill\.teacher .*images at each step"),
        ("callbacks.frozen_backbone.unfreeze_at_epoch", 2, r"never unfrozen"),
    ],
)
def test_a_linear_probe_refuses_what_needs_images_or_processes(
    key: str, value: Any, said: str
) -> None:
    """Features computed once, un-augmented, on one device: each misfit is one line."""
    probe = OmegaConf.create(
        {
            "train": True,
            "model": {"task": "multiclass", "probe": {"enabled": True}},
            "data": {"augment": {"preset": "none", "mixup_alpha": 0.0}},
            "trainer": {"devices": 1, "num_nodes": 1},
        }
    )
    check_values(probe)
    OmegaConf.update(probe, key, value)
    assert re.search(said, refusal(probe)), refusal(probe)
    OmegaConf.update(probe, "model.probe.enabled", False)
    if key not in ("trainer.devices", "trainer.num_nodes"):  # a CPU DDP's count is the machine's
        check_values(probe)  # the same values without a probe


# -- allowed, and said -----------------------------------------------------------------------------
def test_balancing_twice_is_allowed_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    both = OmegaConf.create(
        {"data": {"sampler": "balanced"}, "model": {"class_weights": "balanced"}}
    )
    with caplog.at_level("WARNING"):
        check_values(both)
    assert re.search(
        r"data\.sampler=balanced and model\.class_weights=balanced .*use one", caplog.text
    )
    caplog.clear()
    with caplog.at_level("WARNING"):
        check_values(OmegaConf.create({"data": {"sampler": "balanced"}}))
    assert not caplog.text
