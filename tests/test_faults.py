"""Faults really happen here: processes are SIGKILLed (between epochs, mid-epoch, mid-save) and
signalled, losses turn NaN, the disk fills, checkpoints carry code, configs have typos. Each test
checks that no finished work is lost and that the message says what to do."""

import csv
import errno
import json
import os
import pickle
import signal
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from lightning.pytorch.callbacks import Callback
from PIL import Image

from imgcls.models.loading import load_classifier
from imgcls.models.pretrained import read_state_dict
from imgcls.run.compose import compose_config
from imgcls.run.record import run_recorded
from imgcls.train import build_components, main, train
from imgcls.utils.errors import UserError
from tests.data_factory import write_class_tree, write_shard_set
from tests.helpers import CLI_QUIET, run_cli

# 6 full steps per epoch (1,257 training digits, batches of 200, the last partial one
# dropped), 2 epochs; device augmentation and MixUp on, so randomness matters to the weights
RUN = [
    "model=cifar_quick",
    "optimizer.lr=0.05",
    "data.batch_size=200",
    "data.augment.preset=cifar",
    "data.augment.mixup_alpha=0.2",
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "test=false",
    *CLI_QUIET,
]


def last_weights(log_dir: Path) -> dict[str, torch.Tensor]:
    (ckpt,) = log_dir.glob("train/runs/*/checkpoints/last.ckpt")
    return torch.load(ckpt, weights_only=True)["state_dict"]


def status(log_dir: Path) -> dict:
    (path,) = log_dir.glob("train/runs/*/status.json")
    return json.loads(path.read_text())


def train_cli(log_dir: Path, *extra: str):
    """The command in a process of its own: for the runs that are killed or signalled."""
    return run_cli("train.py", [*RUN, f"paths.log_dir={log_dir}", *extra])


def train_here(log_dir: Path, *extra: str) -> None:
    """The same command in this process, its end recorded as the command line records it: for
    the runs nothing happens to (a resume needs no process of its own)."""
    cfg = compose_config("train", [*RUN, f"paths.log_dir={log_dir}", *extra])
    run_recorded(cfg, lambda: train(cfg))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    log_dir = tmp_path_factory.mktemp("uninterrupted")
    train_here(log_dir)
    return last_weights(log_dir)


def resume_to_the_end(log_dir: Path) -> dict[str, torch.Tensor]:
    """Resume the killed run in `log_dir` in this process: it continues in the killed run's dir,
    to the planned end; returns the final weights."""
    train_here(log_dir, "ckpt_path=last")
    assert len(list(log_dir.glob("train/runs/*/checkpoints"))) == 1  # one run dir
    assert status(log_dir)["status"] == "completed"
    (ckpt,) = log_dir.glob("train/runs/*/checkpoints/last.ckpt")
    saved = torch.load(ckpt, weights_only=True)
    assert (saved["global_step"], saved["epoch"]) == (12, 1)
    return saved["state_dict"]


@pytest.mark.slow(seconds=12)
def test_sigkill_at_an_epoch_boundary_then_resume_gives_the_same_weights(
    uninterrupted, tmp_path: Path
) -> None:
    fault = ["+callbacks.fault._target_=tests.faults.KillAtStep", "+callbacks.fault.step=6"]
    killed = train_cli(tmp_path, *fault)  # after epoch 0's checkpoint
    assert killed.returncode == -signal.SIGKILL
    final = resume_to_the_end(tmp_path)
    assert final.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.equal(final[name], tensor), f"{name} differs"


# SIGKILL halfway through a save, mid-epoch: the previous step checkpoint is intact and the run
# resumes from it: tests/data/sources/test_shards.py


@pytest.mark.parametrize(
    "callbacks",
    [[], ["~callbacks.nonfinite_loss_stop"]],
    ids=["with the early stop", "the model alone"],  # no callback needed to keep it safe
)
def test_nan_loss_stops_naming_step_lr_and_the_good_checkpoint(
    make_cfg, tmp_path: Path, callbacks: list[str]
) -> None:
    cfg = make_cfg(*RUN[:-2], "trainer.deterministic=false", *callbacks)
    objects = build_components(cfg)
    model, trainer = objects["model"], objects["trainer"]

    class NaNFromStep5(torch.nn.Module):
        def __init__(self, criterion: torch.nn.Module) -> None:
            super().__init__()
            self.criterion = criterion

        def forward(self, logits, labels):
            loss = self.criterion(logits, labels)
            return loss * float("nan") if trainer.global_step >= 4 else loss

    model.objective.criterion = NaNFromStep5(model.objective.criterion)
    with pytest.raises(UserError, match=r"NaN or infinite at step 5 .*lr 0\.0\d+.*last\.ckpt"):
        trainer.fit(model, datamodule=objects["datamodule"])
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4  # the step-4 checkpoint, written before the NaN
    weights = {k: v for k, v in saved["state_dict"].items() if k.startswith("net.")}
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_disk_full_is_reported_and_the_last_checkpoint_survives(
    make_cfg, tmp_path: Path, monkeypatch
) -> None:
    real_save, saves = torch.save, []

    def fills_the_disk(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr("imgcls.utils.atomic_save.torch.save", fills_the_disk)
    with pytest.raises(UserError, match=r"No space left .*last\.ckpt.*is intact") as err:
        train(make_cfg(*RUN))
    assert "ckpt_path=last" in str(err.value)
    monkeypatch.undo()
    ckpts = tmp_path / "run" / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 2
    assert not list(ckpts.glob(".*partial"))  # no half-written file left behind


class Payload:
    """Unpickling this makes a directory: proof that code in a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(
    make_cfg, tmp_path: Path
) -> None:
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": Payload(marker), "hyper_parameters": {}}, f)
    attempts = {
        "eval/predict/export": lambda: load_classifier(evil),
        "model.net.weights_path": lambda: read_state_dict(evil),
        "resume": lambda: train(make_cfg(f"ckpt_path={evil}")),
    }
    for name, attempt in attempts.items():
        with pytest.raises(UserError, match=r"Cannot (load|read)") as err:
            attempt()
        assert "\n" not in str(err.value).split(": ", 1)[0], name
        assert not marker.exists(), f"the payload ran through {name}"


def test_resuming_a_checkpoint_of_other_classes_or_net_is_one_line(
    make_cfg, tmp_path: Path
) -> None:
    short = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "test=false"]
    train(make_cfg("model=cifar_quick", *short))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match="holds a cifar_quick but the config builds a lenet"):
        train(make_cfg("model=lenet", f"ckpt_path={ckpt}", run_dir=tmp_path / "b"))
    with pytest.raises(UserError, match=r"trained on 10 classes .* but the data has 3"):
        train(
            make_cfg(
                "model=cifar_quick",
                "data=fake",
                "data.num_classes=3",
                f"ckpt_path={ckpt}",
                run_dir=tmp_path / "c",
            )
        )
    with pytest.raises(UserError, match=r"trained with model\.class_weights=None but the config"):
        train(make_cfg("model=cifar_quick", "model.class_weights=balanced", f"ckpt_path={ckpt}"))
    with pytest.raises(UserError, match=r"ckpt_path=last found no last\.ckpt"):
        train(make_cfg("ckpt_path=last", "paths.log_dir=" + str(tmp_path / "empty")))
    train(make_cfg("model=resnet_cifar", *short, run_dir=tmp_path / "d"))
    deeper = make_cfg(
        "model=resnet_cifar",
        *short,
        "model.net.depth=32",
        f"ckpt_path={tmp_path}/d/checkpoints/last.ckpt",
        run_dir=tmp_path / "e",
    )
    with pytest.raises(
        UserError, match=r"built with depth=20 but .* depth=32: resume with model\.net\.depth=20\.$"
    ):
        train(deeper)  # one line, not a size mismatch per tensor


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model=resnet19", "Available options in 'model'"),
        ("trainer.max_epoch=3", "Key 'max_epoch' is not in struct"),
        ("data=cifar11", "Available options in 'data'"),
    ],
)
def test_config_mistakes_fail_at_start_naming_the_choices(override: str, expected: str) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_config("train", [override])
    assert expected in str(err.value) + str(err.value.__cause__)


def test_predict_refuses_a_decompression_bomb(make_cfg, tmp_path: Path, monkeypatch) -> None:
    from imgcls.predict import predict

    train(make_cfg("model=cifar_quick", "trainer.max_epochs=1", "+trainer.limit_train_batches=1"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # the real limit is 89 Mpx
    Image.new("RGB", (400, 300)).save(tmp_path / "bomb.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "small.png")
    cfg = compose_config(
        "predict",
        [
            f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
            f"input={tmp_path}",
            "num_workers=0",
            "extras.print_config=false",
        ],
        output_dir=tmp_path / "predict",
    )
    by_name = {Path(p.path).name: p for p in predict(cfg)}
    assert "decompression-bomb limit" in by_name["bomb.png"].error
    assert by_name["small.png"].classes


def test_an_unknown_key_on_the_command_line_names_the_close_one(
    tmp_path: Path, command_exit, capsys: pytest.CaptureFixture
) -> None:
    """The command's own entry point, in this process: Hydra refuses the line before any job."""
    assert command_exit(main, "train.py", "trainer.max_epoch=3", f"paths.log_dir={tmp_path}") == 1
    stderr = capsys.readouterr().err
    assert "Did you mean trainer.max_epochs?" in stderr
    assert "The keys of trainer: " in stderr
    assert not (tmp_path / "train").exists()  # refused before any run dir was made


def validated_epochs(log_dir: Path) -> set[int]:
    (metrics,) = log_dir.glob("train/runs/*/csv/metrics.csv")  # the runs' rows, resumed or not
    with open(metrics, newline="") as f:
        return {int(row["epoch"]) for row in csv.DictReader(f) if row.get("val/acc")}


@pytest.mark.slow(seconds=14)
@pytest.mark.parametrize("source", ["shards", "folder"])
def test_a_preempted_run_resumed_ends_its_epoch_where_it_would_validates_and_completes(
    tmp_path: Path, source: str
) -> None:
    """SIGTERM during step 7 (epoch 1 of 3, 5 steps each): stopped at that step's end, before
    the next batch is fetched, saved, and the process exits 0 as `preempted` (SIGUSR1: the
    last test here). Resumed, epoch 1 ends at step 10 as it would have, validates and
    checkpoints, epoch 2 follows, and the run completes; from shards every later step gets the
    uninterrupted run's batch (a loader worker kept through the epochs forgets the resumed
    place; epochs are cut short, as limit_train_batches does, so no worker reaches its end)."""
    photos = write_class_tree(tmp_path / "photos", ["red", "green", "blue"], per_class=27)
    root = photos
    if source == "shards":
        root = write_shard_set(tmp_path, ["red", "green", "blue"], per_class=27)
    record = "+callbacks.record._target_=tests.data.sources.test_shards.RecordBatches"
    args = [
        f"data={source}",
        f"data.root={root}",
        "data.train_crop=32",
        "data.eval_resize=36",
        "data.eval_crop=32",
        "data.batch_size=8",  # 56 training images: 7 batches an epoch, 5 of them trained
        "+trainer.limit_train_batches=5",
        "data.num_workers=1",
        "data.augment.preset=none",  # the workers' random streams are not in a checkpoint
        "model=cifar_quick",
        "trainer.max_epochs=3",
        "test=false",
        record,
        *CLI_QUIET,
    ]
    whole = tmp_path / "whole"
    if source == "shards":  # the uninterrupted run, whose batches the resumed run must get
        cfg = compose_config(
            "train", [*args, f"paths.log_dir={whole}", f"+callbacks.record.path={whole}.txt"]
        )
        run_recorded(cfg, lambda: train(cfg))

    stopped = tmp_path / "stopped"
    again = [*args, f"paths.log_dir={stopped}", f"+callbacks.record.path={stopped}.txt"]
    fault = [
        "+callbacks.fault._target_=tests.faults.SignalAtStep",
        "+callbacks.fault.step=6",
        "+callbacks.fault.name=SIGTERM",
    ]
    result = run_cli("train.py", [*again, *fault])
    assert result.returncode == 0, result.stderr[-2000:]
    assert status(stopped)["status"] == "preempted"
    (last,) = stopped.glob("train/runs/*/checkpoints/last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 7

    epochs = ["+callbacks.epochs._target_=tests.test_faults.SavedEpochs"] * (source == "shards")
    resume = compose_config("train", [*again, "ckpt_path=last", *epochs])
    _, objects = run_recorded(resume, lambda: train(resume))
    assert status(stopped)["status"] == "completed"
    assert torch.load(last, weights_only=True)["global_step"] == 15
    assert validated_epochs(stopped) == {0, 1, 2}
    if source == "shards":  # the loader's place came back with the checkpoint
        assert validated_epochs(whole) == {0, 1, 2}
        seen = Path(f"{whole}.txt").read_text().splitlines()
        assert Path(f"{stopped}.txt").read_text().splitlines() == seen
        (saved_epochs,) = (c.saved for c in objects["callbacks"] if isinstance(c, SavedEpochs))
        assert saved_epochs == [(2, 2)] * 3 + [(3, 3)] * 5  # LitData counts from 1


class SavedEpochs(Callback):
    """At each step's end: the epoch a checkpoint would save for the shards loader and for its
    dataset (LitData keeps both; a resumed epoch's must agree, or a second resume in it reads
    another epoch's order)."""

    def __init__(self) -> None:
        self.saved: list[tuple[int, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = trainer.datamodule.state_dict()["train_loader"]
        self.saved.append((state["current_epoch"], state["dataset"]["current_epoch"]))


@pytest.mark.slow(seconds=12)
def test_sigusr1_in_the_last_step_saves_exits_cleanly_and_stops_before_the_test_the_resume_runs(
    tmp_path: Path,
) -> None:
    """SIGUSR1 (SIGTERM: the preempted-run tests above) during step 6 of 6: the signalled step
    runs and is saved, the process exits 0 as `preempted` before its test, which the resume
    runs."""
    signal_in_last_step = [
        "+callbacks.fault._target_=tests.faults.SignalAtStep",
        "+callbacks.fault.step=5",  # during step 6 of 6
        "+callbacks.fault.name=SIGUSR1",
    ]
    args = ["trainer.max_epochs=1", "test=true", "+trainer.limit_test_batches=1"]
    result = train_cli(tmp_path, *args, *signal_in_last_step)
    assert result.returncode == 0, result.stderr[-2000:]
    assert status(tmp_path)["status"] == "preempted"
    assert "not tested" in status(tmp_path)["detail"]
    (ckpt,) = tmp_path.glob("train/runs/*/checkpoints/last.ckpt")
    assert torch.load(ckpt, weights_only=True)["global_step"] == 6  # the signalled step ran
    train_here(tmp_path, *args, "ckpt_path=last")
    assert status(tmp_path)["status"] == "completed"
    (metrics,) = tmp_path.glob("train/runs/*/metrics.json")
    assert "test/acc" in json.loads(metrics.read_text())
