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
