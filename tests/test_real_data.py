"""Integration on the real photos in ../shared/data (skipped where that archive is absent)."""

import subprocess
from pathlib import Path

import pytest

from imgcls import REPO_ROOT
from imgcls.train import train

ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.xz"


@pytest.fixture(scope="module")
def cifar10_jpg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} is not here")
    root = tmp_path_factory.mktemp("cifar10-jpg")
    subprocess.run(["tar", "-xJf", str(ARCHIVE), "-C", str(root)], check=True)
    return root


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
