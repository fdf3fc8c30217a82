"""Integration on real photos: CIFAR-10's JPEG copy in ../shared/data where that archive is, else
the 144 of its photos in tests/fixtures/cifar10-jpg (see tests/fixtures/README.md), at sizes and
thresholds of their own."""

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
ON_ARCHIVE = ARCHIVE.is_file()
# the archive's first 32 train and 16 test photos (sorted names) of airplane, automobile and frog
FIXTURE = Path(__file__).parent / "fixtures" / "cifar10-jpg"


def real_photos(root: Path, *classes: str) -> Path:
    """CIFAR-10's JPEG tree, <split>/<class>/NNNN.jpg: the archive extracted under root (only the
    folders of `classes` where given), or where the archive is absent the fixture, in place."""
    if not ON_ARCHIVE:
        return FIXTURE
    wildcards = ["--wildcards", *(f"*/{name}/*" for name in classes)] if classes else []
    subprocess.run(["tar", "-xJf", str(ARCHIVE), "-C", str(root), *wildcards], check=True)
    return root


@pytest.fixture(scope="module")
def cifar10_jpg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_photos(tmp_path_factory.mktemp("cifar10-jpg"))


@pytest.mark.slow
def test_real_cifar10_from_jpeg_folders_learns(make_cfg, cifar10_jpg: Path) -> None:
    """Real CIFAR-10 JPEGs through the folder path (listing, decoding in workers, augmenting).
    The archive: 100 steps of batch 64 with the quick net, 1,280 test images. The fixture: 3
    classes, 75 photos to train on (val carved from the 96), its 48 test photos; 10 epochs of
    batch 16 with AdamW (40 SGD steps left some seeds all but at chance) in 2 workers."""
    if ON_ARCHIVE:
        classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse"]
        classes += ["ship", "truck"]
        test_images, floor = 10_000, 0.25  # chance is 0.1
        run = [
            "optimizer.lr=0.05",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=100",
            "+trainer.limit_val_batches=10",
            "+trainer.limit_test_batches=20",
        ]
    else:
        classes = ["airplane", "automobile", "frog"]
        test_images, floor = 48, 0.45  # chance is 1/3; seeds gave 0.60-0.67
        run = [
            "optimizer=adamw",
            "optimizer.lr=2e-3",
            "data.batch_size=16",
            "data.num_workers=2",  # not one per core: the same draws on any machine
            "trainer.max_epochs=10",
        ]
    cfg = make_cfg(
        "data=folder",
        f"data.root={cifar10_jpg}",
        "model=cifar_quick",
        "data.augment.preset=cifar",
        *run,
    )
    metrics, objects = train(cfg)
    datamodule = objects["datamodule"]
    assert datamodule.num_classes == len(classes)
    assert datamodule.class_names == classes
    assert len(datamodule.splits.test) == test_images  # test/ is used as given
    assert metrics["test/acc"] > floor


def link_photos(photos: Path, root: Path, layout: dict) -> Path:
    """root/<split>/<class>/: links to the sorted files [first:last] of photos/<from>/<class>/,
    each `times` times, as layout = {split: {class: (from, first, last, times)}}."""
    for split, classes in layout.items():
        for name, (source, first, last, times) in classes.items():
            (root / split / name).mkdir(parents=True)
            for image in sorted((photos / source / name).iterdir())[first:last]:
                for k in range(times):
                    link = image.name if times == 1 else f"{image.stem}-{k}{image.suffix}"
                    (root / split / name / link).symlink_to(image)
    return root


@pytest.mark.slow(seconds=20)
def test_balanced_sampler_and_class_weights_raise_the_minority_class_recall(
    make_cfg, tmp_path: Path
) -> None:
    """Real photos, imbalanced. The archive, 20x: 500 airplanes and 25 ships to train on (val
    carved from them), 200 of each to test, 5 epochs of batch 64. The fixture, 12x: 24 airplanes
    linked 6 times each and 12 frogs (not ships: from a handful, the net learnt nothing that
    told them from airplanes, and the balanced runs flipped between all one and all the other),
    8 other photos of each for val (a carved val would hold 2 or 3 frogs, too few to pick a
    checkpoint by), its 16 of each to test, 6 epochs of batch 16. In the same steps, the plain
    run predicts airplane throughout; a balanced draw or balanced class weights find the
    minority class. The checkpoint is picked by val/acc_balanced, as the imbalance warning
    advises."""
    if ON_ARCHIVE:
        minority = "ship"
        layout = {
            "train": {"airplane": ("train", 0, 500, 1), minority: ("train", 0, 25, 1)},
            "test": {"airplane": ("test", 0, 200, 1), minority: ("test", 0, 200, 1)},
        }
        run = ["trainer.max_epochs=5"]
    else:
        minority = "frog"
        layout = {
            "train": {"airplane": ("train", 0, 24, 6), minority: ("train", 0, 12, 1)},
            "val": {"airplane": ("train", 24, 32, 1), minority: ("train", 12, 20, 1)},
            "test": {"airplane": ("test", 0, 16, 1), minority: ("test", 0, 16, 1)},
        }
        run = ["data.batch_size=16", "trainer.max_epochs=6"]
    photos = real_photos(tmp_path, "airplane", minority)
    root = link_photos(photos, tmp_path / "imbalanced", layout)
    recall = {}
    for option in ("", "data.sampler=balanced", "model.class_weights=balanced"):
        run_dir = tmp_path / (option or "plain")
        cfg = make_cfg(
            "data=folder",
            f"data.root={root}",
            "data.in_memory=true",
            "data.augment.preset=none",
            *(f"data.{size}=32" for size in ("train_crop", "eval_resize", "eval_crop")),
            "model=cifar_quick",
            "optimizer.lr=0.05",
            *run,
            "callbacks.model_checkpoint.monitor=val/acc_balanced",
            "callbacks.training_batch_grid=null",  # pictures: not the point here
            "callbacks.validation_confusion=null",
            *([option] if option else []),
            run_dir=run_dir,
        )
        train(cfg)
        with open(run_dir / "per_class.csv") as f:
            recall[option] = {r["class"]: float(r["recall"]) for r in csv.DictReader(f)}
    plain = recall[""][minority]
    assert plain < 0.1  # the minority class all but never predicted
    assert recall["data.sampler=balanced"][minority] > plain + 0.3
    assert recall["model.class_weights=balanced"][minority] > plain + 0.3


MOSAIC_CLASSES = ["airplane", "automobile", "frog"]


@pytest.mark.slow(seconds=15)
def test_multilabel_mosaics_of_real_photos_train_predict_and_export(
    make_cfg, tmp_path: Path
) -> None:
    """2x2 mosaics of real photos (16 px tiles of one or two classes), labelled with the classes
    they show, listed in a CSV with three bad rows: the rows are left out and listed, the
    net learns a mAP far above chance (about 0.5: half the labels are present), and predict
    gives many test mosaics their exact label set. The archive: 800 mosaics to train on for 20
    epochs; the fixture: 400 of its 32 photos a class for 8 epochs, val and test mosaics of its
    16 test photos a class, lower bars (14 seeds gave mAP 0.86-0.94, F1 0.78-0.85, the worst AP
    0.71, 50-65% exact)."""
    photos = real_photos(tmp_path, *MOSAIC_CLASSES)
    if ON_ARCHIVE:
        counts = {"train": 800, "val": 100, "test": 200}
        run = ["optimizer.lr=3e-3", "trainer.max_epochs=20"]
        min_map, min_ap, min_exact = 0.8, 0.7, 0.5
    else:
        counts = {"train": 400, "val": 60, "test": 120}
        run = ["optimizer.lr=1e-3", "data.batch_size=16", "trainer.max_epochs=8"]
        min_map, min_ap, min_exact = 0.75, 0.6, 0.4
    labels_csv = write_mosaics(photos, tmp_path / "mosaics", MOSAIC_CLASSES, counts, tile=16)
    with open(labels_csv) as f:
        expected = {row["path"]: set(row["labels"].split(";")) for row in csv.DictReader(f)}
    with open(labels_csv, "a") as f:
        f.write("train/missing.png,frog,train\n")
        f.write("train/0001.png,,train\n")
        f.write("test/0001.png,frog;unicorn,test\n")
    run_dir = tmp_path / "run"
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
        *run,
        "callbacks.training_batch_grid=null",  # pictures: not the point here
        "callbacks.validation_confusion=null",
        run_dir=run_dir,
    )
    metrics, _ = train(cfg)
    bad = (run_dir / "bad_rows.txt").read_text().splitlines()
    rows = sum(counts.values())  # after the header line
    assert bad == [
        f"labels.csv line {rows + 2}: no such file {tmp_path / 'mosaics' / 'train/missing.png'}",
        f"labels.csv line {rows + 3}: 0001.png: no label",
        f"labels.csv line {rows + 4}: 0001.png: label 'unicorn' is not among the train rows' "
        "labels",
    ]
    assert metrics["test/map"] > min_map
    assert metrics["test/f1_micro"] > 0.7  # every label on every mosaic: 2/3
    with open(run_dir / "per_class.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["class"] for row in table] == MOSAIC_CLASSES
    assert all(float(row["ap"]) > min_ap for row in table)

    ckpt = run_dir / "checkpoints" / "best.ckpt"
    test_dir = tmp_path / "mosaics" / "test"
    predictions = predict(
        compose_task("predict", tmp_path, f"ckpt_path={ckpt}", f"input={test_dir}")
    )
    assert len(predictions) == counts["test"]
    right = sum(
        set(p.classes) == expected[str(Path(p.path).relative_to(tmp_path / "mosaics"))]
        for p in predictions
    )
    assert right > min_exact * counts["test"]  # many mosaics get their exact label set
    card = export(compose_task("export", tmp_path, f"ckpt_path={ckpt}", "format=state_dict"))
    assert card["task"] == "multilabel"
    assert set(card["thresholds"]) == set(MOSAIC_CLASSES)
