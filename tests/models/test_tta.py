"""models/tta.py: test-time augmentation: flip averaging is the mean of the two passes; shift
puts half the weight on the image (and its mirror), half on its two shifted views, reflect
padded; through the model's eval_logits as evaluation and predict call it."""

import torch

from imgcls.models.classifier import ImageClassifier
from imgcls.models.tta import tta_logits


class Recording:
    """A 'model' whose k-th call returns the k-th one-hot row (for every image), and keeps what
    it was shown: the result of tta_logits is then each view's weight, in call order."""

    def __init__(self, calls: int) -> None:
        self.calls, self.shown = calls, []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.shown.append(images.clone())
        onehot = torch.zeros(len(images), self.calls, dtype=torch.float64)
        onehot[:, len(self.shown) - 1] = 1
        return onehot


def grid(height: int = 6, width: int = 7) -> torch.Tensor:
    """One image whose every pixel is different: its position can be read back from it."""
    return torch.arange(3 * height * width, dtype=torch.float64).view(1, 3, height, width)


def test_flip_tta_averages_the_mirror_logits() -> None:
    torch.manual_seed(0)
    model = ImageClassifier(
        net={"name": "lenet"}, num_classes=10, optimizer={}, tta_flip=True
    ).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = (model(images) + model(images.flip(-1))) / 2
        torch.testing.assert_close(model.eval_logits(images), expected)
        assert not torch.allclose(model.eval_logits(images), model(images))


def test_shift_tta_weighs_the_shifted_views_like_airbench() -> None:
    torch.manual_seed(0)
    model = ImageClassifier(
        net={"name": "lenet"}, num_classes=10, optimizer={}, tta_flip=True, tta_shift=1
    ).eval()
    images = torch.randn(2, 3, 32, 32)
    padded = torch.nn.functional.pad(images, [1, 1, 1, 1], mode="reflect")
    up_left, down_right = padded[..., :32, :32], padded[..., 2:, 2:]
    assert torch.equal(up_left[..., 1:, 1:], images[..., :31, :31])
    with torch.no_grad():
        flip_mean = [(model(x) + model(x.flip(-1))) / 2 for x in (images, up_left, down_right)]
        expected = flip_mean[0] / 2 + (flip_mean[1] + flip_mean[2]) / 4
        torch.testing.assert_close(model.eval_logits(images), expected)


def test_without_views_the_model_is_called_once() -> None:
    model, images = Recording(1), grid()
    assert tta_logits(model, images, flip=False, shift=0).tolist() == [[1.0]]
    assert len(model.shown) == 1
    assert torch.equal(model.shown[0], images)


def test_flip_weighs_the_image_and_its_mirror_alike() -> None:
    model, images = Recording(2), grid()
    assert tta_logits(model, images, flip=True, shift=0).tolist() == [[0.5, 0.5]]
    assert torch.equal(model.shown[0], images)
    assert torch.equal(model.shown[1][..., 0], images[..., -1])  # left and right swapped
    assert torch.equal(model.shown[1], images.flip(-1))


def test_shift_views_move_the_image_by_s_pixels_each_way_and_reflect_the_border() -> None:
    model, images, s = Recording(3), grid(), 2
    weights = tta_logits(model, images, flip=False, shift=s)
    assert weights.tolist() == [[0.5, 0.25, 0.25]]
    original, up_left, down_right = model.shown
    assert torch.equal(original, images)
    assert up_left.shape == down_right.shape == images.shape
    assert torch.equal(up_left[..., s:, s:], images[..., :-s, :-s])  # content moved down-right
    assert torch.equal(down_right[..., :-s, :-s], images[..., s:, s:])  # and up-left
    assert torch.equal(up_left[..., 0, s:], images[..., s, :-s])  # the border reflected
    assert torch.equal(down_right[..., -1, :-s], images[..., -1 - s, s:])


def test_flip_and_shift_give_each_of_the_six_views_its_weight() -> None:
    model = Recording(6)
    weights = tta_logits(model, grid(), flip=True, shift=1)
    torch.testing.assert_close(
        weights, torch.tensor([[1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8, 1 / 8]], dtype=torch.float64)
    )
    for view, mirror in zip(model.shown[::2], model.shown[1::2], strict=True):
        assert torch.equal(mirror, view.flip(-1))  # each shifted view with its own mirror
