"""CIFAR, ImageNet and folder sources on tiny generated data: layouts, splits, class names."""

import csv
from collections import Counter
from pathlib import Path

import pytest
import torch

from imgcls.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from imgcls.data.files import stratified_split
from imgcls.data.folder import FolderDataModule
from imgcls.data.imagenet import ImageNetDataModule
from imgcls.utils.errors import UserError
from tests.data_factory import write_cifar, write_class_tree, write_image, write_imagenet


def labels_of(dataset) -> list[int]:
    return [int(dataset[i][1]) for i in range(len(dataset))]


# -- CIFAR ------------------------------------------------------------------------------------
@pytest.mark.usefixtures("fake_cifar_integrity")
def test_cifar10_in_memory_with_a_stratified_seeded_val_split(tmp_path: Path) -> None:
    write_cifar(tmp_path, 10, per_class=10, test_per_class=3)
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=20, split_seed=1)
    dm.setup()
    assert dm.class_names == [f"class{c}" for c in range(10)]
    train, val, test = dm.splits.train, dm.splits.val, dm.splits.test
    assert (len(train), len(val), len(test)) == (80, 20, 30)
    assert Counter(val.tensors[1].tolist()) == dict.fromkeys(range(10), 2)  # stratified
    images = train.tensors[0]
    assert images.dtype == torch.uint8
    assert images.shape[1:] == (3, 32, 32)
    again = CIFAR10DataModule(root=str(tmp_path), val_size=20, split_seed=1)
    again.setup()
    assert torch.equal(again.splits.val.tensors[0], val.tensors[0])
    other = CIFAR10DataModule(root=str(tmp_path), val_size=20, split_seed=2)
    other.setup()
    assert not torch.equal(other.splits.val.tensors[0], val.tensors[0])
    assert dm.resolved_workers() == 0  # in memory: no worker processes


@pytest.mark.usefixtures("fake_cifar_integrity")
def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    write_cifar(tmp_path, 100, per_class=5, test_per_class=1)
    dm = CIFAR100DataModule(root=str(tmp_path), val_size=100)
    dm.setup()
    assert dm.num_classes == 100
    assert len(dm.splits.test) == 100
    assert sorted(set(dm.splits.val.tensors[1].tolist())) == list(range(100))


def test_missing_cifar_says_where_to_put_it(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"cifar-10-batches-py.*data\.download=true"):
        dm.setup()


# -- folders ----------------------------------------------------------------------------------
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
    dm = FolderDataModule(root=str(tmp_path), in_memory=True, augment="cifar", num_workers=0)
    dm.setup()
    images, labels = dm.splits.train.tensors
    assert images.shape == (14, 3, 32, 32)
    assert images.dtype == torch.uint8
    assert sorted(set(labels.tolist())) == [0, 1]
    assert dm.resolved_workers() == 0


def test_folder_files_dataset_applies_the_preset(tmp_path: Path) -> None:
    write_class_tree(tmp_path, ["a", "b"], per_class=10)
    dm = FolderDataModule(
        root=str(tmp_path), augment="standard", train_crop=24, eval_resize=40, eval_crop=32
    )
    dm.setup()
    assert dm.splits.train[0][0].shape == (3, 24, 24)
    assert dm.splits.test[0][0].shape == (3, 32, 32)


# -- ImageNet ---------------------------------------------------------------------------------
def test_imagenet_names_classes_and_tests_on_val(tmp_path: Path) -> None:
    write_imagenet(tmp_path)
    dm = ImageNetDataModule(root=str(tmp_path))
    assert dm.class_names == ["tench", "goldfish", "great white shark"]
    assert dm.class_dirs == ["n01440764", "n01443537", "n01484850"]
    samples = dm.split_samples()
    assert samples["val"] == samples["test"]
    assert len(samples["train"]) == 12
    assert len(samples["val"]) == 6


def test_imagenet_without_val_says_so(tmp_path: Path) -> None:
    write_class_tree(tmp_path / "train", ["n01440764"], per_class=1, suffix=".JPEG")
    with pytest.raises(UserError, match="not an ImageNet folder"):
        ImageNetDataModule(root=str(tmp_path)).split_samples()


def test_stratified_split_proportions_per_class() -> None:
    labels = [0] * 10 + [1] * 30
    train, val, test = stratified_split(labels, [0.7, 0.2, 0.1], seed=0)
    assert sorted(train + val + test) == list(range(40))
    assert Counter(labels[i] for i in val) == {0: 2, 1: 6}
    assert Counter(labels[i] for i in test) == {0: 1, 1: 3}


@pytest.mark.parametrize("per_class", [[3, 5], [4, 4], [2, 2, 2], [1, 1, 2, 2]])
def test_every_split_asked_for_gets_images_however_small_the_classes(per_class) -> None:
    """Rounding each class's share of 10% down to 0 must not leave the test split empty."""
    labels = [c for c, n in enumerate(per_class) for _ in range(n)]
    parts = stratified_split(labels, [0.7, 0.2, 0.1], seed=0)
    assert all(parts), [len(p) for p in parts]
    assert sorted(i for part in parts for i in part) == list(range(len(labels)))
    assert parts == stratified_split(labels, [0.7, 0.2, 0.1], seed=0)  # reproducible
    assert not stratified_split(labels, [0.8, 0.2, 0.0], seed=0)[2]  # none asked, none given
    # a class is never taken out of training whole
    assert {labels[i] for i in parts[0]} == set(labels)


def test_failed_download_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    dm = CIFAR10DataModule(root=str(tmp_path), download=True)
    with pytest.raises(UserError, match=r"Could not download CIFAR10.*no route to host"):
        dm.setup()


def test_a_folder_says_at_start_what_would_surprise(tmp_path: Path, caplog) -> None:
    root = write_class_tree(tmp_path / "photos", ["cat", "dog"], per_class=10)  # 40 x 30 px
    write_class_tree(root, ["rare"], per_class=1)
    datamodule = FolderDataModule(root=str(root), augment="standard")  # 224 px crops
    with caplog.at_level("WARNING"):
        datamodule.setup()
    assert "The val split has no image of 1 class(es) (rare)" in caplog.text
    assert "about 30 px on their short side but are cropped to 224 px" in caplog.text
    assert "data.train_crop=30 data.eval_resize=30 data.eval_crop=30" in caplog.text
