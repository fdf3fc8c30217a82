"""data/sources/digits.py: scikit-learn's digits as a source: stratified, seeded, disjoint
splits of every scan, their sizes, the scans' pixels, class names and k-fold validation."""

import pytest
import torch
from omegaconf import OmegaConf
from sklearn.datasets import load_digits

from imgcls import CONFIG_DIR
from imgcls.data.sources.digits import DigitsDataModule, load_digit_images


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=32)
    dm.setup()
    return dm


def labels_of(dataset) -> torch.Tensor:
    return dataset.tensors[1]


def scans_of(*splits) -> list[bytes]:
    """Each image of the splits as bytes (the 1,797 scans are all different)."""
    return [image.numpy().tobytes() for split in splits for image in split.tensors[0]]


def test_digits_split_sizes_are_stratified_and_disjoint(digits: DigitsDataModule) -> None:
    train, val, test = (digits.splits.train, digits.splits.val, digits.splits.test)
    assert (len(train), len(val), len(test)) == (1257, 180, 360)
    for split in (train, val, test):
        share = torch.bincount(labels_of(split), minlength=10).float() / len(split)
        assert share.min() > 0.08
        assert share.max() < 0.12
    images = [s.tensors[0].flatten(1) for s in (train, val, test)]
    # no image of one split appears in another (the scans have no exact duplicates across splits)
    rows = {tuple(r.tolist()) for r in images[0]}
    assert not any(tuple(r.tolist()) in rows for r in images[2])


def test_digits_split_is_reproducible_and_seeded() -> None:
    a, b, c = DigitsDataModule(), DigitsDataModule(), DigitsDataModule(split_seed=1)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(labels_of(a.splits.test), labels_of(b.splits.test))
    assert not torch.equal(a.splits.test.tensors[0], c.splits.test.tensors[0])


def test_digits_images_are_uint8_32px_rgb(digits: DigitsDataModule) -> None:
    image, label = digits.splits.train[0]
    assert image.dtype == torch.uint8
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1])
    assert 0 <= int(label) <= 9
    assert int(image.max()) > 200  # the 0..16 scans are rescaled to the full 0..255 range
    assert digits.class_names == [str(d) for d in range(10)]
    assert digits.num_classes == 10


def test_digits_config_statistics_match_the_train_split(digits: DigitsDataModule) -> None:
    cfg = OmegaConf.load(CONFIG_DIR / "data" / "digits.yaml")
    pixels = digits.splits.train.tensors[0].float() / 255
    assert cfg.mean[0] == pytest.approx(pixels.mean().item(), abs=0.005)
    assert cfg.std[0] == pytest.approx(pixels.std().item(), abs=0.005)


def test_digits_k_folds_keep_the_test_split_and_validate_on_each_fold_once() -> None:
    folds = [DigitsDataModule(folds=5, fold=i) for i in range(5)]
    for dm in folds:
        dm.setup()
    tests = [labels_of(dm.splits.test) for dm in folds]
    assert all(torch.equal(t, tests[0]) for t in tests)
    vals = [dm.splits.val.tensors[0] for dm in folds]
    assert sum(len(v) for v in vals) == len(folds[0].splits.train) + len(vals[0])
    assert all(len(v) in (287, 288) for v in vals)  # 1,438 non-test images / 5
    counts = torch.stack([torch.bincount(labels_of(dm.splits.val), minlength=10) for dm in folds])
    spread = counts.max(dim=0).values - counts.min(dim=0).values
    assert int(spread.max()) <= 1  # each class dealt evenly over the folds


def test_the_three_splits_hold_every_scan_once(digits: DigitsDataModule) -> None:
    splits = (digits.splits.train, digits.splits.val, digits.splits.test)
    scans = scans_of(*splits)
    assert len(scans) == len(set(scans)) == 1797


def test_the_scans_are_the_sixteen_grey_levels_stretched_to_255() -> None:
    images, labels = load_digit_images(8)  # the scans' own size: no resampling
    scans = load_digits()
    expected = torch.as_tensor(scans.images * (255 / 16)).round().to(torch.uint8)
    assert images.shape == (1797, 3, 8, 8)
    assert torch.equal(images[:, 0], expected)
    assert torch.equal(labels, torch.as_tensor(scans.target))
    bigger, _ = load_digit_images(16)
    assert bigger.shape == (1797, 3, 16, 16)


def test_image_size_and_fractions_set_the_splits() -> None:
    dm = DigitsDataModule(image_size=16, val_fraction=0.25, test_fraction=0.5)
    dm.setup()
    train, val, test = dm.splits.train, dm.splits.val, dm.splits.test
    assert train.tensors[0].shape[1:] == (3, 16, 16)
    assert abs(len(test) - 1797 * 0.5) <= 1
    assert abs(len(val) - 1797 * 0.25) <= 1
    assert len(train) + len(val) + len(test) == 1797
    for split in (train, val, test):  # stratified at any fractions
        share = torch.bincount(labels_of(split), minlength=10).float() / len(split)
        assert share.max() - share.min() < 0.02


def test_each_fold_trains_and_validates_on_disjoint_parts_of_the_same_images() -> None:
    folds = [DigitsDataModule(folds=3, fold=i) for i in range(3)]
    for dm in folds:
        dm.setup()
    rest = set(scans_of(folds[0].splits.train, folds[0].splits.val))
    vals = []
    for dm in folds:
        train, val = set(scans_of(dm.splits.train)), set(scans_of(dm.splits.val))
        assert not train & val
        assert train | val == rest  # the same non-test images in every fold
        assert not rest & set(scans_of(dm.splits.test))
        vals.append(val)
    assert set.union(*vals) == rest  # the validation folds partition them
    assert sum(len(v) for v in vals) == len(rest)
