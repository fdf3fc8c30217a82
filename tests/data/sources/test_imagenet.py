"""data/sources/imagenet.py on a tiny generated tree: class names, val as the test split."""

from pathlib import Path

import pytest

from imgcls.data.sources.imagenet import ImageNetDataModule
from imgcls.utils.errors import UserError
from tests.data_factory import write_class_tree, write_imagenet


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


def test_k_folds_never_put_imagenets_val_images_which_are_its_test_split_in_training(
    tmp_path: Path,
) -> None:
    root = write_imagenet(tmp_path / "imagenet", train_per_class=6, val_per_class=2)
    samples = ImageNetDataModule(root=str(root), folds=2, fold=1).split_samples()
    test = {p for p, _ in samples["test"]}
    assert len(test) == 6
    assert not test & {p for p, _ in samples["train"] + samples["val"]}
    assert len(samples["train"]) + len(samples["val"]) == 18


def test_a_minival_from_train_validates_on_held_out_train_images_and_tests_on_val(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_imagenet(tmp_path / "imagenet", train_per_class=6, val_per_class=2)
    plain = ImageNetDataModule(root=str(root))
    assert plain.test_is_validation
    minival = ImageNetDataModule(root=str(root), val_from_train=3)
    assert not minival.test_is_validation
    samples = minival.split_samples()
    val, train = {p for p, _ in samples["val"]}, {p for p, _ in samples["train"]}
    assert len(val) == 3
    assert sorted(label for _, label in samples["val"]) == [0, 1, 2]  # stratified
    assert not val & train
    assert len(train) == 18 - 3
    assert all("/train/" in p for p in val)
    assert {p for p, _ in samples["test"]} == {p for p, _ in plain.split_samples()["test"]}
    with pytest.raises(UserError, match="not below the 18 train images"):
        ImageNetDataModule(root=str(root), val_from_train=18).split_samples()
    with pytest.raises(UserError, match=r"without data\.folds"):
        ImageNetDataModule(root=str(root), val_from_train=3, folds=2)
    for source, warned in ((plain, True), (minival, False)):
        caplog.clear()
        source.test_dataloader()
        assert ("test split is the validation split" in caplog.text) == warned
