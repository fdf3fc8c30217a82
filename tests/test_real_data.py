"""Integration on the real photos in ../shared/data (skipped where that archive is absent)."""

import csv
import subprocess
from pathlib import Path

import pytest

from imgcls import REPO_ROOT
from imgcls.export import export
from imgcls.predict import predict
from imgcls.train import train
from tests.data_factory import write_mosaics
from tests.helpers import compose_task

ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.xz"


def extract(root: Path, *members: str) -> Path:
    """The archive (only `members`, shell patterns, where given) under root."""
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} is not here")
    wildcards = ["--wildcards", *members] if members else []
    subprocess.run(["tar", "-xJf", str(ARCHIVE), "-C", str(root), *wildcards], check=True)
    return root


@pytest.fixture(scope="module")
def cifar10_jpg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract(tmp_path_factory.mktemp("cifar10-jpg"))


@pytest.mark.slow
def test_real_cifar10_from_jpeg_folders_learns(make_cfg, cifar10_jpg: Path) -> None:
    """Real CIFAR-10 JPEGs through the folder path (listing, decoding in workers, augmenting):
    100 steps of batch 64 with the quick net, 1,280 test images."""
    cfg = make_cfg(
        "data=folder",
        f"data.root={cifar10_jpg}",
        "model=cifar_quick",
        "optimizer.lr=0.05",
        "data.augment.preset=cifar",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=100",
        "+trainer.limit_val_batches=10",
        "+trainer.limit_test_batches=20",
    )
    metrics, objects = train(cfg)
    datamodule = objects["datamodule"]
    assert datamodule.num_classes == 10
    assert datamodule.class_names[0] == "airplane"
    assert len(datamodule.splits.test) == 10_000  # test/ is used as given
    assert metrics["test/acc"] > 0.25  # chance is 0.1


@pytest.mark.slow(seconds=20)
def test_balanced_sampler_and_class_weights_raise_the_minority_class_recall(
    make_cfg, tmp_path: Path
) -> None:
    """Real photos, 20x imbalanced: 500 airplanes and 25 ships to train on (val carved from
    them), 200 of each to test. In the same 30 steps, the plain run predicts airplane
    throughout; a balanced draw or balanced class weights find ships. The checkpoint is picked
    by val/acc_balanced, as the imbalance warning advises."""
    photos = extract(tmp_path, "*/airplane/*", "*/ship/*")
    root = tmp_path / "imbalanced"
    for split, counts in (
        ("train", {"airplane": 500, "ship": 25}),
        ("test", {"airplane": 200, "ship": 200}),
    ):
        for name, count in counts.items():
            (root / split / name).mkdir(parents=True)
            for image in sorted((photos / split / name).iterdir())[:count]:
                (root / split / name / image.name).symlink_to(image)
    recall = {}
    for option in ("", "data.sampler=balanced", "model.class_weights=balanced"):
        run = tmp_path / (option or "plain")
        cfg = make_cfg(
            "data=folder",
            f"data.root={root}",
            "data.in_memory=true",
            "data.augment.preset=none",
            *(f"data.{size}=32" for size in ("train_crop", "eval_resize", "eval_crop")),
            "model=cifar_quick",
            "optimizer.lr=0.05",
            "trainer.max_epochs=5",
            "callbacks.model_checkpoint.monitor=val/acc_balanced",
            "callbacks.training_batch_grid=null",  # pictures: not the point here
            "callbacks.validation_confusion=null",
            *([option] if option else []),
            run_dir=run,
        )
        train(cfg)
        with open(run / "per_class.csv") as f:
            recall[option] = {r["class"]: float(r["recall"]) for r in csv.DictReader(f)}
    plain = recall[""]["ship"]
    assert plain < 0.1  # the minority class all but never predicted
    assert recall["data.sampler=balanced"]["ship"] > plain + 0.3
    assert recall["model.class_weights=balanced"]["ship"] > plain + 0.3


MOSAIC_CLASSES = ["airplane", "automobile", "frog"]


@pytest.mark.slow(seconds=15)
def test_multilabel_mosaics_of_real_photos_train_predict_and_export(
    make_cfg, tmp_path: Path
) -> None:
    """2x2 mosaics of real photos (16 px tiles of one or two classes), labelled with the classes
    they show, listed in a CSV with three bad rows: the rows are left out and listed, the
    net learns a mAP far above chance (about 0.5: half the labels are present), and predict
    gives most test mosaics their exact label set."""
    photos = extract(tmp_path, *(f"*/{name}/*" for name in MOSAIC_CLASSES))
    counts = {"train": 800, "val": 100, "test": 200}
    labels_csv = write_mosaics(photos, tmp_path / "mosaics", MOSAIC_CLASSES, counts, tile=16)
    with open(labels_csv) as f:
        expected = {row["path"]: set(row["labels"].split(";")) for row in csv.DictReader(f)}
    with open(labels_csv, "a") as f:
        f.write("train/missing.png,frog,train\n")
        f.write("train/0001.png,,train\n")
        f.write("test/0001.png,frog;unicorn,test\n")
    run = tmp_path / "run"
    cfg = make_cfg(
        "data=csv",
        f"data.csv={labels_csv}",
        "data.in_memory=true",
        "data.augment.preset=cifar_light",
        *(f"data.{size}=32" for size in ("train_crop", "eval_resize", "eval_crop")),
        "model.task=multilabel",
        "model.threshold=fit",
        "model=cifar_quick",
        "optimizer=adamw",  # SGD at lr 0.2 swung with the thread count (mAP 0.94 or 0.77)
        "optimizer.lr=3e-3",
        "trainer.max_epochs=20",
        "callbacks.training_batch_grid=null",  # pictures: not the point here
        "callbacks.validation_confusion=null",
        run_dir=run,
    )
    metrics, _ = train(cfg)
    bad = (run / "bad_rows.txt").read_text().splitlines()
    rows = sum(counts.values())  # after the header line
    assert bad == [
        f"labels.csv line {rows + 2}: no such file {tmp_path / 'mosaics' / 'train/missing.png'}",
        f"labels.csv line {rows + 3}: 0001.png has no label",
        f"labels.csv line {rows + 4}: 0001.png: label 'unicorn' is not among the train rows' "
        "labels",
    ]
    assert metrics["test/map"] > 0.8
    assert metrics["test/f1_micro"] > 0.7
    with open(run / "per_class.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["class"] for row in table] == MOSAIC_CLASSES
    assert all(float(row["ap"]) > 0.7 for row in table)

    ckpt = run / "checkpoints" / "best.ckpt"
    test_dir = tmp_path / "mosaics" / "test"
    predictions = predict(
        compose_task("predict", tmp_path, f"ckpt_path={ckpt}", f"input={test_dir}")
    )
    assert len(predictions) == 200
    right = sum(
        set(p.classes) == expected[str(Path(p.path).relative_to(tmp_path / "mosaics"))]
        for p in predictions
    )
    assert right > 100  # most mosaics get their exact label set
    card = export(compose_task("export", tmp_path, f"ckpt_path={ckpt}", "format=state_dict"))
    assert card["task"] == "multilabel"
    assert set(card["thresholds"]) == set(MOSAIC_CLASSES)
