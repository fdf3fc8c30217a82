"""data/sources/folder.py: layouts, splits, scanning, in memory or from files, what it warns of at
start, and training on a folder with bad files in it."""

import csv
from collections import Counter
from pathlib import Path

import pytest
import torch

from imgcls.data.sources.folder import FolderDataModule
from imgcls.train import train
from imgcls.utils.errors import UserError
from tests.data_factory import BAD, photo_tree, write_class_tree, write_image


def test_class_folders_only_are_split_70_20_10_by_class(tmp_path: Path) -> None:
    write_class_tree(tmp_path / "photos", ["church", "tower"], per_class=20)
    dm = FolderDataModule(root=str(tmp_path / "photos"), artifacts_dir=str(tmp_path / "run"))
    samples = dm.split_samples()
    for name, per_class in (("train", 14), ("val", 4), ("test", 2)):
        assert Counter(y for _, y in samples[name]) == {0: per_class, 1: per_class}, name
    all_paths = [p for s in samples.values() for p, _ in s]
    assert len(all_paths) == len(set(all_paths)) == 40
    with open(tmp_path / "run" / "split.csv") as f:
        rows = list(csv.DictReader(f))
    assert Counter(r["split"] for r in rows) == {"train": 28, "val": 8, "test": 4}
    assert {r["class"] for r in rows} == {"church", "tower"}
    same = FolderDataModule(root=str(tmp_path / "photos")).split_samples()
    assert same == samples
    other = FolderDataModule(root=str(tmp_path / "photos"), split_seed=5).split_samples()
    assert other["test"] != samples["test"]


def test_train_val_test_folders_are_used_as_given(tmp_path: Path) -> None:
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        write_class_tree(tmp_path / split, ["a", "b"], per_class=n)
    dm = FolderDataModule(root=str(tmp_path), artifacts_dir=str(tmp_path / "run"))
    samples = dm.split_samples()
    assert {k: len(v) for k, v in samples.items()} == {"train": 10, "val": 4, "test": 6}
    assert all("/test/" in p for p, _ in samples["test"])
    assert not (tmp_path / "run" / "split.csv").exists()  # nothing was carved


def test_missing_test_folder_is_carved_from_train(tmp_path: Path) -> None:
    write_class_tree(tmp_path / "train", ["a", "b"], per_class=16)
    write_class_tree(tmp_path / "val", ["a", "b"], per_class=2)
    samples = FolderDataModule(root=str(tmp_path), split=(0.7, 0.2, 0.1)).split_samples()
    # test takes 0.1 / (0.7 + 0.1) of train, per class: round(16 / 8) = 2
    assert Counter(y for _, y in samples["test"]) == {0: 2, 1: 2}
    assert len(samples["train"]) == 28
    assert len(samples["val"]) == 4
    assert not {p for p, _ in samples["test"]} & {p for p, _ in samples["train"]}


@pytest.mark.parametrize("val_folder", [False, True])
def test_k_folds_make_disjoint_stratified_val_splits_and_keep_the_test_split(
    tmp_path: Path, val_folder: bool
) -> None:
    """Fold i of 5 is the validation split: the 5 val splits cover train (and a given val
    folder) once, each class spread evenly; the test split is the same in every fold."""
    if val_folder:
        write_class_tree(tmp_path / "train", ["a", "b"], per_class=16)
        write_class_tree(tmp_path / "val", ["a", "b"], per_class=4)
        root = tmp_path
    else:
        root = write_class_tree(tmp_path / "photos", ["a", "b"], per_class=20)
    folds = [
        FolderDataModule(root=str(root), folds=5, fold=i, artifacts_dir=str(tmp_path / f"run{i}"))
        for i in range(5)
    ]
    splits = [dm.split_samples() for dm in folds]
    assert all(s["test"] == splits[0]["test"] for s in splits)
    assert Counter(y for _, y in splits[0]["test"]) == {0: 2, 1: 2}  # 0.1 of 20 a class
    pool = {p for p, _ in splits[0]["train"] + splits[0]["val"]}
    assert len(pool) == 36
    assert not pool & {p for p, _ in splits[0]["test"]}
    vals = [{p for p, _ in s["val"]} for s in splits]
    assert set().union(*vals) == pool
    assert sum(map(len, vals)) == 36
    for s, val in zip(splits, vals, strict=True):
        assert Counter(y for _, y in s["val"]) in ({0: 3, 1: 4}, {0: 4, 1: 3}, {0: 4, 1: 4})
        assert {p for p, _ in s["train"]} == pool - val
    with open(tmp_path / "run3" / "split.csv") as f:
        assert {r["path"] for r in csv.DictReader(f) if r["split"] == "val"} == vals[3]


def test_folder_scan_skips_hidden_non_images_and_empty_classes(tmp_path: Path) -> None:
    write_class_tree(tmp_path, ["a", "b"], per_class=3)
    write_image(tmp_path / "a" / "UPPER.JPG", (1, 2, 3))  # upper-case suffix: an image
    write_image(tmp_path / "a" / "nested" / "deep.png", (1, 2, 3), format="PNG")  # recursive
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\1")
    write_image(tmp_path / "a" / "._hidden.jpg", (1, 2, 3))  # macOS resource fork: hidden
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".git").mkdir()
    dm = FolderDataModule(root=str(tmp_path))
    assert dm.class_names == ["a", "b"]
    names = {Path(p).name for split in dm.split_samples().values() for p, _ in split}
    assert {"UPPER.JPG", "deep.png"} <= names
    assert not {".DS_Store", "._hidden.jpg", "notes.txt"} & names


def test_folder_errors_name_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"not a directory.*DIR/train/<class>"):
        FolderDataModule(root=str(tmp_path / "missing")).split_samples()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="No class folders with images"):
        FolderDataModule(root=str(tmp_path / "empty")).split_samples()


def test_folder_in_memory_decodes_once_into_a_tensor(tmp_path: Path) -> None:
    write_class_tree(tmp_path, ["a", "b"], per_class=10)
    dm = FolderDataModule(
        root=str(tmp_path), in_memory=True, augment={"preset": "cifar"}, num_workers=0
    )
    dm.setup()
    images, labels = dm.splits.train.tensors
    assert images.shape == (14, 3, 32, 32)
    assert images.dtype == torch.uint8
    assert sorted(set(labels.tolist())) == [0, 1]
    assert dm.resolved_workers() == 0


def test_folder_files_dataset_applies_the_preset(tmp_path: Path) -> None:
    write_class_tree(tmp_path, ["a", "b"], per_class=10)
    dm = FolderDataModule(
        root=str(tmp_path),
        augment={"preset": "standard"},
        train_crop=24,
        eval_resize=40,
        eval_crop=32,
    )
    dm.setup()
    assert dm.splits.train[0][0].shape == (3, 24, 24)
    assert dm.splits.test[0][0].shape == (3, 32, 32)


def test_a_folder_says_at_start_what_would_surprise(tmp_path: Path, caplog) -> None:
    root = write_class_tree(tmp_path / "photos", ["cat", "dog"], per_class=15)  # 40 x 30 px
    write_class_tree(root, ["rare"], per_class=1)
    datamodule = FolderDataModule(root=str(root), augment={"preset": "standard"})  # 224 px crops
    with caplog.at_level("WARNING"):
        datamodule.setup()
    assert "The val split has no image of 1 class(es) (rare)" in caplog.text
    assert "about 30 px on their short side but are cropped to 224 px" in caplog.text
    assert "data.train_crop=30 data.eval_resize=30 data.eval_crop=30" in caplog.text
    assert datamodule.class_counts("train").tolist() == [10, 10, 1]


def test_training_on_a_folder_skips_and_lists_bad_files(make_cfg, tmp_path: Path) -> None:
    root = photo_tree(tmp_path / "photos")
    cfg = make_cfg(
        "data=folder",
        f"data.root={root}",
        "data.augment.preset=cifar",
        "data.batch_size=16",
        "data.num_workers=0",
        "model=cifar_quick",
        "optimizer.lr=0.05",
        "trainer.max_epochs=6",
    )
    metrics, objects = train(cfg)
    assert objects["datamodule"].class_names == ["blue", "green", "red"]
    assert metrics["test/acc"] > 0.9  # three flat colours
    listed = (tmp_path / "run" / "bad_images.txt").read_text().splitlines()
    assert {Path(line.split("\t")[0]).name for line in listed} <= set(BAD)
    assert (tmp_path / "run" / "split.csv").is_file()
