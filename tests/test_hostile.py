"""Hostile data, misuse and sweeps, as a new user meets them: nothing lost, nothing hangs, every
failure one line. Each class of input that once broke is tested as a class."""

import csv
import json
import os
import re
from pathlib import Path

import pytest

from imgcls.data.decoding.images import BadImageError, read_rgb
from imgcls.data.sources.folder import FolderDataModule
from imgcls.data.sources.imagenet import class_names_of
from imgcls.predict import predict
from imgcls.run.compose import set_in_struct
from imgcls.run.record import run_recorded
from imgcls.train import main, train
from imgcls.utils.errors import UserError
from imgcls.utils.paths import PATH_TEXT
from imgcls.verify import verify
from tests.data_factory import write_class_tree, write_image
from tests.helpers import fake_trainer

QUICK = ["model=cifar_quick", "trainer.max_epochs=1", "+trainer.limit_train_batches=2"]


# -- runs that should train ---------------------------------------------------------------------
@pytest.mark.parametrize("no_logger", ["logger=[]", "~logger", "cfg.logger = None"])
def test_a_run_without_a_logger_trains(make_cfg, no_logger: str) -> None:
    if no_logger.startswith("cfg."):  # as lightning-hydra-template's tests set it
        cfg = make_cfg(*QUICK)
        set_in_struct(cfg, "logger", None)
    else:
        cfg = make_cfg(*QUICK, no_logger)
    metrics, objects = train(cfg)
    assert objects["trainer"].loggers == []
    assert objects["trainer"].global_step == 2
    assert 0 <= metrics["test/acc"] <= 1


def test_a_rank_with_less_than_a_batch_of_files_still_trains(tmp_path: Path) -> None:
    """2 processes, 12 images, batch 8: each rank has 6, one partial batch (not none)."""

    root = write_class_tree(tmp_path, ["a", "b"], per_class=10)
    dm = FolderDataModule(root=str(root), split=(0.5, 0.25, 0.25), batch_size=8, num_workers=0)
    dm.trainer = fake_trainer(world_size=2, rank=0)
    dm.setup()
    assert len(dm.splits.train) == 12
    assert not dm.train_dataloader().drop_last


# -- sweeps -------------------------------------------------------------------------------------
# an Optuna search of DDP trials leaves no process, and each trial its status:
# tests/run/test_task.py


# -- files --------------------------------------------------------------------------------------
def test_folder_links_back_into_the_dataset_are_skipped_and_reported(tmp_path: Path) -> None:
    root = write_class_tree(tmp_path / "data", ["a", "b"], per_class=3)
    (root / "a" / "loop").symlink_to(".")  # a loop
    (root / "a" / "up").symlink_to("..")  # into the other class
    (root / "a" / "twin").symlink_to(root / "a")  # the same files again
    outside = write_class_tree(tmp_path / "elsewhere", ["more"], per_class=2) / "more"
    (root / "b" / "more").symlink_to(outside)  # out of the tree: a real extra folder
    dm = FolderDataModule(root=str(root))
    labels = [label for samples in dm.split_samples().values() for _, label in samples]
    assert labels.count(0) == 3  # a: its own 3, once each
    assert labels.count(1) == 5  # b: 3 + 2 behind the link that leaves the tree
    assert set(dm.skipped_links) == {str(root / "a" / n) for n in ("loop", "up", "twin")}


def test_verify_lists_the_skipped_links(make_cfg, tmp_path: Path) -> None:
    root = write_class_tree(tmp_path / "data", ["a", "b"], per_class=3)
    (root / "a" / "loop").symlink_to(".")
    problems = verify(make_cfg("data=folder", f"data.root={root}", config_name="verify"))
    assert [(p, "leads back into the dataset" in r) for p, r in problems] == [
        (str(root / "a" / "loop"), True)
    ]


NON_UTF8 = b"caf\xe9 \xff.jpg"  # Latin-1 and a byte no encoding maps: a real, legal file name


@pytest.fixture
def tree_with_non_utf8_names(tmp_path: Path) -> Path:
    root = write_class_tree(tmp_path / "data", ["a", "b"], per_class=4)
    good = os.fsdecode(bytes(root / "a") + b"/" + NON_UTF8)
    write_image(Path(good), (200, 30, 30))
    Path(os.fsdecode(bytes(root / "b") + b"/bad " + NON_UTF8)).write_bytes(b"")  # empty: bad
    return root


def test_non_utf8_file_names_train_and_are_listed_byte_for_byte(
    make_cfg, tree_with_non_utf8_names: Path, tmp_path: Path
) -> None:
    cfg = make_cfg(
        "model=cifar_quick",
        "trainer.max_epochs=1",
        "data=folder",
        f"data.root={tree_with_non_utf8_names}",
        "data.split=[0.5,0.25,0.25]",
        "data.num_workers=1",  # bad files are met in a worker process
        "data.batch_size=2",  # batches cover all 6 training images
    )
    train(cfg)  # every split is read once at least: the bad file is met wherever it fell
    run = tmp_path / "run"
    assert b"bad " + NON_UTF8 in (run / "bad_images.txt").read_bytes()
    assert NON_UTF8 in (run / "split.csv").read_bytes()
    with open(run / "split.csv", newline="", **PATH_TEXT) as f:
        listed = {row["path"] for row in csv.DictReader(f)}
    assert all(Path(p).exists() for p in listed)  # every name written back losslessly


def test_non_utf8_file_names_predict_and_verify(
    make_cfg, tree_with_non_utf8_names: Path, tmp_path: Path
) -> None:
    train(make_cfg(*QUICK, "test=false"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    predict_cfg = make_cfg(
        f"ckpt_path={ckpt}",
        f"input={tree_with_non_utf8_names}",
        "output_format=json",
        config_name="predict",
        run_dir=tmp_path / "predict",
    )
    predictions = predict(predict_cfg)
    assert len(predictions) == 10
    written = (tmp_path / "predict" / "predictions.csv").read_bytes()
    assert NON_UTF8 in written
    assert b"bad " + NON_UTF8 in written
    verify_cfg = make_cfg(
        "data=folder",
        f"data.root={tree_with_non_utf8_names}",
        config_name="verify",
        run_dir=tmp_path / "verify",
    )
    problems = verify(verify_cfg)
    assert len(problems) == 1
    assert b"bad " + NON_UTF8 in (tmp_path / "verify" / "problems.csv").read_bytes()


# -- work lost ----------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_refused_resume_leaves_the_earlier_run_as_it_was(make_cfg, tmp_path: Path) -> None:
    first = make_cfg(*QUICK, run_dir=tmp_path / "first")
    run_recorded(first, lambda: train(first))
    before = snapshot(tmp_path / "first")
    assert json.loads((tmp_path / "first" / "status.json").read_text())["status"] == "completed"

    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    other = make_cfg(
        *QUICK, "data=fake", "data.num_classes=3", f"ckpt_path={ckpt}", run_dir=tmp_path / "other"
    )
    with pytest.raises(UserError, match="trained on 10 classes"):
        run_recorded(other, lambda: train(other))
    assert snapshot(tmp_path / "first") == before
    refused = json.loads((tmp_path / "other" / "status.json").read_text())
    assert refused["status"] == "failed"


# -- messages -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("data.batch_size=0", "data.batch_size=0 is not allowed: a whole number >= 1"),
        ("data.batch_size=-1", "data.batch_size=-1 is not allowed: a whole number >= 1"),
        ("optimizer.lr=-1", "optimizer.lr=-1 is not allowed: a number > 0"),
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc' is not allowed: a whole number"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 is not allowed"),
        ("optimizer.momentum=1.5", "optimizer.momentum=1.5 is not allowed: a number in"),
        ("model.class_weights=[1,-1]", "model.class_weights=[1, -1] is not allowed: null, bal"),
        ("model.class_weights=even", "model.class_weights='even' is not allowed: null, bal"),
        ("model.class_weights=[1,2]", "model.class_weights has 2 values for 10 classes"),
        ("data.sampler=even", "Unknown data.sampler='even'. Options: random, balanced."),
        ("data.folds=1", "data.folds=1 is not allowed: a whole number >= 2"),
        ("data.folds=5 data.fold=5", "data.fold=5 is not allowed with data.folds=5: folds are 0"),
        ("data.fold=2", "data.fold=2 needs data.folds"),
        ("data=csv", "data.csv is not set: give it on the command line, data.csv=..."),
        ("model.threshold=abc", "model.threshold='abc' is not allowed: fit, or a number in (0, 1)"),
        ("model.task=multi", "Unknown model.task='multi'. Did you mean multilabel or multiclass?"),
        ("optimized_metric=val/map_best", "optimized_metric=val/map_best is not logged with"),
        (
            "model.task=multilabel callbacks.model_checkpoint.monitor=val/acc_balanced",
            "callbacks.model_checkpoint.monitor=val/acc_balanced is not logged with model.task=mu",
        ),
    ],
)
def test_values_out_of_range_are_one_line_before_any_work(make_cfg, override, says) -> None:
    with pytest.raises(UserError, match="^" + re.escape(says)):
        train(make_cfg(*override.split()))


def test_a_log_dir_that_cannot_be_made_is_one_line(tmp_path: Path, command_exit) -> None:
    """Met while Hydra makes the run dir, before any job: the command's own entry point, in this
    process, exits with the one line (Python prints it and exits with code 1; a mistake met
    inside a job: tests/run/test_task.py)."""
    (tmp_path / "a_file").touch()
    message = str(command_exit(main, "train.py", f"paths.log_dir={tmp_path}/a_file/logs"))
    assert message.startswith(f"UserError: cannot make a run dir in {tmp_path}/a_file/logs")
    assert "\n" not in message


def test_a_folder_with_one_class_says_so(tmp_path: Path) -> None:
    root = write_class_tree(tmp_path, ["only"], per_class=3)
    with pytest.raises(UserError, match=r"one class folder with images \(only\).*two or more"):
        _ = FolderDataModule(root=str(root)).class_names


@pytest.mark.parametrize("keep", [2, 10, 60])
def test_a_jpeg_cut_inside_its_header_is_a_damaged_jpeg(tmp_path: Path, keep: int) -> None:
    whole = write_image(tmp_path / "whole.jpg", (90, 120, 200)).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: max(keep, 3)])
    with pytest.raises(BadImageError, match="damaged JPEG"):
        read_rgb(cut)


def test_imagenet_class_names_are_unique_and_human() -> None:
    from timm.data import ImageNetInfo

    names = class_names_of(ImageNetInfo().label_names())
    assert len(set(names)) == 1000
    assert names[:3] == ["tench", "goldfish", "great white shark"]
    assert {"crane (bird)", "crane (machine)", "maillot (tights)", "maillot (swimsuit)"} <= set(
        names
    )
