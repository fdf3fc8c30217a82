"""Integration on the real photos in ../shared/data (skipped where that archive is absent)."""

import csv
import subprocess
from pathlib import Path

import pytest

from imgcls import REPO_ROOT
from imgcls.train import train

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
        "data.augment=cifar",
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
    """Real photos, 20x imbalanced: 1,000 airplanes and 50 ships to train on (val carved from
    them), 200 of each to test. In the same 80 steps, the plain run predicts airplane
    throughout; a balanced draw or balanced class weights find ships. The checkpoint is picked
    by val/acc_balanced, as the imbalance warning advises."""
    photos = extract(tmp_path, "*/airplane/*", "*/ship/*")
    root = tmp_path / "imbalanced"
    for split, counts in (
        ("train", {"airplane": 1000, "ship": 50}),
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
            "data.augment=none",
            *(f"data.{size}=32" for size in ("train_crop", "eval_resize", "eval_crop")),
            "model=cifar_quick",
            "optimizer.lr=0.05",
            "trainer.max_epochs=5",
            "callbacks.model_checkpoint.monitor=val/acc_balanced",
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
