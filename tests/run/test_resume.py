"""run/resume.py: `ckpt_path=last` picks the newest run of the same command, never another
command's nor one still training; a checkpoint that does not fit the run is one line naming the
fix, before any weights load; a run resumed longer stretches its LR schedule."""

import copy
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from omegaconf import DictConfig, OmegaConf
from torch import nn

from imgcls import CONFIG_DIR
from imgcls.models.classifier import RUN_LENGTH
from imgcls.models.optim import build_optimizer, build_scheduler
from imgcls.run import resume
from imgcls.run.compose import compose_config, set_in_struct
from imgcls.run.dirs import LOCK_FILE
from imgcls.run.resume import (
    Resume,
    check_checkpoint_fits,
    newest_last_checkpoint,
    recipe,
    resume_target,
    run_overrides,
)
from imgcls.train import train
from imgcls.utils.errors import UserError

DIGITS = [str(d) for d in range(10)]  # the default data's classes


def run_with_last_ckpt(runs: Path, name: str, overrides: list[str]) -> Path:
    """A finished run as the command line leaves it: its overrides and a last.ckpt."""
    (runs / name / ".hydra").mkdir(parents=True)
    (runs / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (runs / name / "checkpoints").mkdir()
    ckpt = runs / name / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"")
    return ckpt


def aged(ckpt: Path, seconds: int) -> Path:
    """Set the file's mtime: which run is newest is decided here, not by the clock."""
    os.utime(ckpt, (seconds, seconds))
    return ckpt


def hold(run: Path, pid: int, host: str | None = None) -> None:
    (run / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))


# -- which overrides make a command --------------------------------------------------------------
def test_recipe_ignores_the_overrides_free_on_a_resume() -> None:
    line = [
        "optimizer.lr=0.05",
        "ckpt_path=last",
        "trainer.max_epochs=30",
        "+trainer.max_steps=5000",
        "logger=csv",
        "+logger.wandb.offline=true",
        "~callbacks.rich_progress_bar",
        "callbacks=[default,ema]",
        "extras.print_config=false",
        "paths.log_dir=/elsewhere",
        "hydra.run.dir=/x",
        "model=lenet",
        "trainer.min_epochs=2",  # not the epoch count a resume may change
        "data.batch_size=64",
    ]
    assert recipe(line) == [
        "data.batch_size=64",
        "model=lenet",
        "optimizer.lr=0.05",
        "trainer.min_epochs=2",
    ]
    assert recipe(list(reversed(line))) == recipe(line)  # the order typed does not matter
    # a key is free only whole, or below a free one: a longer name sharing its start is not
    assert recipe(["loggers_extra=1", "trainer.max_epochs_x=1"]) == [
        "loggers_extra=1",
        "trainer.max_epochs_x=1",
    ]


def test_run_overrides_reads_hydras_record_or_says_none(tmp_path: Path) -> None:
    run_with_last_ckpt(tmp_path, "plain", [])
    run_with_last_ckpt(tmp_path, "lr", ["optimizer.lr=0.1"])
    assert run_overrides(tmp_path / "plain") == []  # started with none: a recipe too
    assert run_overrides(tmp_path / "lr") == ["optimizer.lr=0.1"]
    assert run_overrides(tmp_path / "no_such_run") is None
    (tmp_path / "lr" / ".hydra" / "overrides.yaml").write_text("[unclosed")
    assert run_overrides(tmp_path / "lr") is None


# -- ckpt_path=last -----------------------------------------------------------------------------
@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Four finished runs, oldest first: two of this command (the newer one with other free
    overrides), one of another command and one with no record of its command; this command
    resumes with more epochs and another logger."""
    runs = tmp_path / "train" / "runs"
    aged(run_with_last_ckpt(runs, "mine_old", ["optimizer.lr=0.05", "trainer.max_epochs=1"]), 100)
    mine = ["trainer.max_epochs=2", "logger=csv", "optimizer.lr=0.05"]
    aged(run_with_last_ckpt(runs, "mine_new", mine), 200)
    aged(run_with_last_ckpt(runs, "other", ["optimizer.lr=0.02"]), 300)
    aged(run_with_last_ckpt(runs, "unrecorded", []), 400)
    (runs / "unrecorded" / ".hydra" / "overrides.yaml").unlink()
    command = ["optimizer.lr=0.05", "ckpt_path=last", "trainer.max_epochs=5"]
    monkeypatch.setattr(resume, "command_overrides", lambda: command)
    return runs


def test_ckpt_path_last_takes_the_newest_run_of_the_same_command(
    runs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO"):
        found = newest_last_checkpoint(runs)
    assert found == runs / "mine_new" / "checkpoints" / "last.ckpt"
    assert f"resuming {found}" in caplog.text  # it says which


def test_ckpt_path_last_passes_over_a_run_still_training(runs: Path) -> None:
    hold(runs / "mine_new", os.getpid())  # a live process on this host
    assert newest_last_checkpoint(runs) == runs / "mine_old" / "checkpoints" / "last.ckpt"
    hold(runs / "mine_old", 1, host="another-host")  # another host's lock is taken as live
    with pytest.raises(UserError) as err:
        newest_last_checkpoint(runs)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        "ckpt_path=last found no last.ckpt of this command (optimizer.lr=0.05) under"
    )
    assert f"{runs / 'mine_new'} is still being trained (pid {os.getpid()}" in message
    assert f"{runs / 'mine_old'} is still being trained (pid 1 on another-host" in message
    assert f"the newest run of another command is {runs / 'unrecorded'}" in message
    assert message.endswith(": pass ckpt_path=<path to a last.ckpt> instead.")


def test_ckpt_path_last_never_takes_another_commands_run(
    runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resume, "command_overrides", lambda: ["optimizer.lr=0.01"])
    with pytest.raises(UserError, match=r"another command is .*unrecorded: pass ckpt_path="):
        newest_last_checkpoint(runs)
    monkeypatch.setattr(resume, "command_overrides", lambda: ["ckpt_path=last"])
    with pytest.raises(UserError, match=r"no last\.ckpt of this command \(no overrides\)"):
        newest_last_checkpoint(runs / "no_runs_here")


def test_ckpt_path_last_resumes_a_run_started_with_no_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python train.py`, then `python train.py ckpt_path=last`: the README's own advice."""
    from imgcls.run import resume

    runs = tmp_path / "train" / "runs"
    ckpt = run_with_last_ckpt(runs, "plain", [])
    run_with_last_ckpt(runs, "other", ["model=lenet"])
    os.utime(ckpt, (1, 1))  # the other run's is newer
    monkeypatch.setattr(resume, "command_overrides", lambda: ["ckpt_path=last"])
    assert resume.newest_last_checkpoint(runs) == ckpt


# -- where a resume continues -------------------------------------------------------------------
def save_checkpoint(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": {"net": {"name": "lenet"}}, "state_dict": {}}, path)
    return path


def resume_cfg(tmp_path: Path, ckpt_path: object, train: bool = True) -> DictConfig:
    output_dir = tmp_path / "this_command"
    paths = {"output_dir": str(output_dir), "log_dir": str(tmp_path / "logs")}
    return OmegaConf.create(
        {"ckpt_path": ckpt_path, "train": train, "task_name": "train", "paths": paths}
    )


def test_a_checkpoint_of_a_run_resumes_into_its_run_dir(tmp_path: Path) -> None:
    tmp_path = tmp_path.resolve()  # the checkpoint's path is resolved: compare like with like
    ckpt = save_checkpoint(tmp_path / "logs" / "train" / "runs" / "a" / "checkpoints" / "x.ckpt")
    target = resume_target(resume_cfg(tmp_path, str(ckpt)))
    assert target is not None
    assert target.ckpt == ckpt.resolve()
    assert target.run_dir == ckpt.parent.parent
    assert target.checkpoint["hyper_parameters"]["net"] == {"name": "lenet"}

    loose = save_checkpoint(tmp_path / "weights" / "model.ckpt")  # not in a run's checkpoints/
    assert resume_target(resume_cfg(tmp_path, str(loose))).run_dir is None
    own = save_checkpoint(tmp_path / "this_command" / "checkpoints" / "last.ckpt")
    assert resume_target(resume_cfg(tmp_path, str(own))).run_dir is None  # already its dir


def test_ckpt_path_last_resolves_under_the_tasks_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resume, "command_overrides", lambda: ["ckpt_path=last"])
    tmp_path = tmp_path.resolve()
    runs = tmp_path / "logs" / "train" / "runs"
    run_with_last_ckpt(runs, "a", [])
    save_checkpoint(runs / "a" / "checkpoints" / "last.ckpt")
    target = resume_target(resume_cfg(tmp_path, "last"))
    assert (target.ckpt, target.run_dir) == (runs / "a" / "checkpoints" / "last.ckpt", runs / "a")


def test_nothing_to_resume_without_a_checkpoint_or_outside_training(tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "logs" / "train" / "runs" / "a" / "checkpoints" / "x.ckpt")
    assert resume_target(resume_cfg(tmp_path, None)) is None
    assert resume_target(resume_cfg(tmp_path, str(ckpt), train=False)) is None  # eval's ckpt


def test_a_run_still_training_is_never_resumed_into(tmp_path: Path) -> None:
    run = tmp_path / "logs" / "train" / "runs" / "a"
    ckpt = save_checkpoint(run / "checkpoints" / "last.ckpt")
    hold(run, os.getpid())
    with pytest.raises(UserError) as err:
        resume_target(resume_cfg(tmp_path, str(ckpt)))
    assert str(err.value) == (
        f"{run} is still being trained (pid {os.getpid()} on {socket.gethostname()}; if it is "
        f"not, delete {LOCK_FILE} there): wait for it, or resume another run."
    )


# -- a checkpoint held to the run ---------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> DictConfig:
    """The config of the run the checkpoints below come from: the default resnet_cifar on the
    digits, 3 epochs (composed once: each test changes a copy)."""
    return compose_config(
        "train",
        ["model=resnet_cifar", "trainer.max_epochs=3"],
        output_dir=tmp_path_factory.mktemp("trained"),
    )


def scheduler_config(name: str) -> dict[str, Any]:
    """configs/scheduler/<name>.yaml over the configs its defaults name (warmup_cosine: cosine)."""
    node = OmegaConf.load(CONFIG_DIR / "scheduler" / f"{name}.yaml")
    bases = [scheduler_config(base) for base in node.pop("defaults", []) if base != "_self_"]
    return OmegaConf.to_container(OmegaConf.merge(*bases, node))


@pytest.fixture
def fit(trained: DictConfig) -> Callable[..., tuple[Resume, DictConfig]]:
    """fit(*overrides, run_length=3, **saved) -> (a checkpoint of `trained`'s run, its
    hyperparameters changed by `saved`; `trained`'s config changed by `overrides`, each
    `key=value` as on the command line)."""

    def make(*overrides: str, run_length: int = 3, **saved: Any) -> tuple[Resume, DictConfig]:
        hparams = {
            "net": OmegaConf.to_container(trained.model.net, resolve=True),
            "class_weights": None,
            "class_names": DIGITS,
            "scheduler": OmegaConf.to_container(trained.scheduler, resolve=True),
        }
        for key, value in saved.items():
            if key == "net":
                hparams["net"] = {**hparams["net"], **value}
            else:
                hparams[key] = value
        checkpoint = {"hyper_parameters": hparams, RUN_LENGTH: {"max_epochs": run_length}}
        ckpt = Path("/runs/a/checkpoints/last.ckpt")
        cfg = trained.copy()
        for override in overrides:
            key, value = override.lstrip("+").split("=", 1)
            set_in_struct(cfg, key, yaml.safe_load(value))
        return Resume(ckpt, checkpoint, ckpt.parent.parent), cfg

    return make


def refusal(target: Resume, cfg: DictConfig, class_names: list[str] = DIGITS) -> str:
    with pytest.raises(UserError) as err:
        check_checkpoint_fits(target, cfg, class_names)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_checkpoint_of_the_same_run_fits(fit) -> None:
    check_checkpoint_fits(*fit(), DIGITS)
    # where the weights came from and the head's init are overridden by the checkpoint's
    check_checkpoint_fits(*fit("model.net.weights=DEFAULT", "model.net.head_init=zeros"), DIGITS)
    # gradient checkpointing trades memory for compute: a resume may switch it
    check_checkpoint_fits(*fit("model.net.grad_checkpointing=true"), DIGITS)
    # no class names saved (an older checkpoint): nothing to hold the data to
    check_checkpoint_fits(*fit(class_names=None), ["a", "b"])


def test_another_net_is_refused_naming_the_net_to_resume_with(fit) -> None:
    message = refusal(*fit(net={"name": "cifar_quick"}))
    assert message == (
        "/runs/a/checkpoints/last.ckpt holds a cifar_quick but the config builds a resnet_cifar: "
        "resume with model.net.name=cifar_quick (and the rest of its config)."
    )


def test_other_net_kwargs_are_refused_naming_each_to_set_or_drop(fit) -> None:
    message = refusal(*fit("model.net.depth=32"))
    assert message == (
        "/runs/a/checkpoints/last.ckpt holds a resnet_cifar built with depth=20 but the config "
        "builds it with depth=32: resume with model.net.depth=20."
    )
    message = refusal(*fit("model.net.width=32", "+model.net.dropout=0.2"))
    assert "built with dropout by default, width=16 but" in message
    assert "builds it with dropout=0.2, width=32: resume with ~model.net.dropout " in message
    assert message.endswith("model.net.width=16.")


def test_other_class_weights_are_refused(fit) -> None:
    assert "trained with model.class_weights=None but the config has balanced" in refusal(
        *fit("model.class_weights=balanced")
    )
    message = refusal(*fit("model.class_weights=[1,3]", class_weights=[1.0, 2.0]))
    assert message.endswith(
        "was trained with model.class_weights=[1.0, 2.0] but the config has [1, 3]: resume with "
        "the class weights it was trained with."
    )
    refusal(*fit(class_weights=[1.0, 2.0]))  # some against none
    refusal(*fit("model.class_weights=[1,2,3]", class_weights=[1.0, 2.0]))  # another count
    # the same numbers, written otherwise; balanced is worked out again from the same data
    check_checkpoint_fits(*fit("model.class_weights=[1,2]", class_weights=[1.0, 2.0000001]), DIGITS)
    check_checkpoint_fits(*fit("model.class_weights=balanced", class_weights=[0.5, 2.0]), DIGITS)


def test_other_classes_are_refused(fit) -> None:
    message = refusal(*fit(), ["cat", "dog", "fox"])
    assert message == (
        "/runs/a/checkpoints/last.ckpt was trained on 10 classes (0, 1, 2, 3, ...) but the data "
        "has 3 (cat, dog, fox, ...): resume with the data config it was trained on."
    )
    refusal(*fit(), list(reversed(DIGITS)))  # the same names in another order: other labels


# step 20 of a 3-epoch run of 10 steps an epoch: 2 epochs trained, as each schedule's state says
TWO_OF_THREE_EPOCHS = {
    "cosine": {"T_max": 30, "last_epoch": 20},
    "onecycle": {"total_steps": 30, "last_epoch": 20},
    "warmup_cosine": {
        "_milestones": [10],
        "last_epoch": 20,
        "_schedulers": [{"total_iters": 10, "last_epoch": 9}, {"T_max": 20, "last_epoch": 10}],
    },
}


@pytest.mark.parametrize("scheduler", list(TWO_OF_THREE_EPOCHS))
def test_a_schedule_spanning_the_run_stretches_to_another_max_epochs(fit, scheduler: str) -> None:
    """Longer, or shorter while epochs are left: the schedule stretches (models/optim.py); no
    epoch left is one line, before any write."""
    saved = scheduler_config(scheduler)
    for max_epochs in (3, 5, 30, -1):  # the planned length, longer ones, no limit
        target, cfg = fit(f"trainer.max_epochs={max_epochs}", scheduler=saved)
        target.checkpoint["lr_schedulers"] = [TWO_OF_THREE_EPOCHS[scheduler]]
        check_checkpoint_fits(target, cfg, DIGITS)
    target, cfg = fit("trainer.max_epochs=3", run_length=4, scheduler=saved)  # 20 of 40 steps
    target.checkpoint["lr_schedulers"] = [TWO_OF_THREE_EPOCHS[scheduler]]
    check_checkpoint_fits(target, cfg, DIGITS)  # shorter, 1 epoch left (of 4 planned, 2 done)
    name = {"cosine": "CosineAnnealingLR", "onecycle": "OneCycleLR"}.get(scheduler)
    for max_epochs in (2, 1):
        target, cfg = fit(f"trainer.max_epochs={max_epochs}", scheduler=saved)
        target.checkpoint["lr_schedulers"] = [TWO_OF_THREE_EPOCHS[scheduler]]
        assert refusal(target, cfg) == (
            "/runs/a/checkpoints/last.ckpt has trained 2 of its 3 epochs: trainer.max_epochs="
            f"{max_epochs} leaves none to stretch its {name or 'CosineAnnealingLR'} schedule "
            "over: resume with trainer.max_epochs above 2."
        )
    state = {**TWO_OF_THREE_EPOCHS[scheduler], "last_epoch": 25}  # saved mid-epoch: 2.5 done
    target, cfg = fit("trainer.max_epochs=2", scheduler=saved)
    target.checkpoint["lr_schedulers"] = [state]
    assert "has trained 2.5 of its 3 epochs" in refusal(target, cfg)


@pytest.mark.parametrize(
    ("scheduler", "state"),
    [
        ({}, None),
        (None, None),
        ({"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 5}, {"last_epoch": 2}),
        (
            {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": 10},
            {"T_max": 10, "last_epoch": 20},
        ),
    ],
    ids=["none", "no scheduler saved", "without a length", "a set length"],
)
def test_a_schedule_that_does_not_span_the_run_may_be_lengthened(fit, scheduler, state) -> None:
    for max_epochs in (30, 1):  # shorter too: Lightning's own business (a fit with none left)
        target, cfg = fit(f"trainer.max_epochs={max_epochs}", scheduler=scheduler)
        if state is not None:
            target.checkpoint["lr_schedulers"] = [state]
        check_checkpoint_fits(target, cfg, DIGITS)


def test_a_checkpoint_without_its_planned_length_is_not_held_to_one(fit) -> None:
    target, cfg = fit("trainer.max_epochs=1")
    del target.checkpoint[RUN_LENGTH]  # saved before the run length was kept
    target.checkpoint["lr_schedulers"] = [TWO_OF_THREE_EPOCHS["cosine"]]
    check_checkpoint_fits(target, cfg, DIGITS)


# -- a run extended ------------------------------------------------------------------------------
class LrProbe(Callback):
    """What a fit starts from (its optimizer's state), the lr of each step, and the lr its last
    step left (after the schedule's last step: the schedule's end)."""

    def __init__(self) -> None:
        self.state: dict[int, Any] = {}
        self.lrs: list[float] = []
        self.end: float | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.state = copy.deepcopy(trainer.optimizers[0].state_dict()["state"])

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.end = trainer.optimizers[0].param_groups[0]["lr"]


EXTENDED = [  # 3 steps an epoch (OneCycleLR's default warm-up divides by zero at 4 in all)
    "model=lenet",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=1",
    "test=false",
    "+callbacks.lr_probe._target_=tests.run.test_resume.LrProbe",
]


def schedule_lrs(cfg: DictConfig, total_steps: int, max_epochs: int) -> list[float]:
    """The lr of each step of a fresh run of the config's schedule, and after its last."""
    optimizer = build_optimizer(nn.Linear(2, 2), OmegaConf.to_container(cfg.optimizer))
    scheduler = build_scheduler(
        optimizer, OmegaConf.to_container(cfg.scheduler), total_steps, max_epochs
    )["scheduler"]
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(total_steps):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle", "warmup_cosine"])
def test_a_run_extended_by_an_epoch_stretches_its_schedule(
    make_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture, scheduler: str
) -> None:
    """`trainer.max_epochs=1`, then `trainer.max_epochs=2 ckpt_path=...` (lightning-hydra-
    template's test_train_resume): the second epoch trains, from the checkpoint's optimizer
    state (SGD's momentum), at the lr a 2-epoch run's schedule has from step 3 on (not the old
    schedule's end, nor a schedule restarted), to that schedule's end; and says so."""
    run = tmp_path / "logs" / "train" / "runs" / "a"
    train(make_cfg(*EXTENDED, f"scheduler={scheduler}", "trainer.max_epochs=1", run_dir=run))
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    cfg = make_cfg(
        *EXTENDED,
        f"scheduler={scheduler}",
        "trainer.max_epochs=2",
        f"ckpt_path={last}",
        run_dir=tmp_path / "resumed",
    )
    with caplog.at_level("INFO", logger="imgcls.models.optim"):
        _, objects = train(cfg)
    (probe,) = [c for c in objects["callbacks"] if isinstance(c, LrProbe)]
    assert objects["trainer"].current_epoch == 2
    assert torch.load(last, weights_only=True)["global_step"] == 6
    momentum = {i: s["momentum_buffer"] for i, s in saved["optimizer_states"][0]["state"].items()}
    assert momentum  # SGD's, after 3 steps
    assert probe.state.keys() == momentum.keys()
    for i, buffer in momentum.items():
        torch.testing.assert_close(probe.state[i]["momentum_buffer"], buffer, rtol=0, atol=0)
    whole = schedule_lrs(cfg, total_steps=6, max_epochs=2)
    assert probe.lrs == pytest.approx(whole[3:6])
    assert probe.end == pytest.approx(whole[6])
    lr = cfg.optimizer.lr
    if scheduler == "onecycle":  # its end is its last step's lr: max_lr / div / final_div
        assert probe.lrs[-1] == pytest.approx(lr / 25 / 1e4)
    else:  # a cosine's, eta_min, once its last step is taken
        assert probe.end == 0.0
    if scheduler == "cosine":
        assert probe.lrs[0] == pytest.approx(lr / 2)  # step 3 of 6: the cosine's middle
    (logged,) = [r.getMessage() for r in caplog.records if "stretched" in r.getMessage()]
    was = saved["lr_schedulers"][0]["_last_lr"][0]
    assert logged.startswith("LR schedule stretched from 3 to 6 steps (")
    assert logged.endswith(
        f"): the lr, {was:.4g} at step 3, goes on at {probe.lrs[0]:.4g} (the new schedule's at "
        f"step 3) to {probe.lrs[-1]:.4g} at step 5"
    )
