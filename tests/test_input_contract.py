"""input_contract.py: what an image goes through before a net sees it, as one multiply-add,
undone for pictures, and carried in checkpoints as plain data."""

import pytest
import torch

from imgcls.input_contract import IMAGENET_MEAN, IMAGENET_STD, InputContract


def test_normalize_is_torchvisions_and_denormalize_gives_the_pixels_back() -> None:
    contract = InputContract(256, 224, IMAGENET_MEAN, IMAGENET_STD)
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalized = contract.normalize(pixels)
    torch.testing.assert_close(normalized, (pixels / 255 - mean) / std)
    assert normalized.dtype == torch.float32
    assert torch.equal(contract.denormalize(normalized), pixels)  # viewable uint8 again


def test_a_checkpoints_plain_data_gives_the_same_contract() -> None:
    contract = InputContract(232, 224, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    saved = contract.as_dict()
    assert saved == {"resize": 232, "crop": 224, "mean": [0.5, 0.4, 0.3], "std": [0.2] * 3}
    assert all(isinstance(v, int | list) for v in saved.values())  # weights_only-loadable
    assert InputContract.from_dict(saved) == contract
    assert InputContract(232, 224, [0.5, 0.4, 0.3], [0.2] * 3) == contract  # lists or tuples


def test_the_constants_are_made_once_per_device() -> None:
    contract = InputContract(32, 32, (0.5,) * 3, (0.25,) * 3)
    images = torch.zeros(1, 3, 2, 2)
    contract.normalize(images)
    first = contract._affine(images.device)
    contract.normalize(images)
    assert contract._affine(images.device)[0] is first[0]  # not a host copy per batch
    assert contract.normalize(images).flatten().tolist() == pytest.approx([-2.0] * 12)


def test_normalization_is_float32_whatever_the_default_dtype() -> None:
    """A half-precision plugin's forward context sets the default dtype (a linear probe computes
    its features in it): the mean and std stay float32, as evaluation normalizes."""
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    expected = InputContract(4, 4, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).normalize(images)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        contract = InputContract(4, 4, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        normalized = contract.normalize(images)
    finally:
        torch.set_default_dtype(default)
    torch.testing.assert_close(normalized, expected, rtol=0, atol=0)
