"""Test-time augmentation: logits averaged over views of each image, for evaluation and predict.

`flip`: the image and its mirror image, averaged. `shift` = s > 0 (airbench's translation TTA):
half the weight on those, half on the same for the image shifted by s px up-left and down-right
(reflect padding).
"""

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor


def tta_logits(model: Callable[[Tensor], Tensor], images: Tensor, flip: bool, shift: int) -> Tensor:
    logits = _flip_averaged(model, images, flip)
    if shift:
        height, width = images.shape[-2:]
        padded = F.pad(images, [shift] * 4, mode="reflect")
        views = (padded[..., :height, :width], padded[..., 2 * shift :, 2 * shift :])
        shifted = sum(_flip_averaged(model, view, flip) for view in views) / len(views)
        logits = (logits + shifted) / 2
    return logits


def _flip_averaged(model: Callable[[Tensor], Tensor], images: Tensor, flip: bool) -> Tensor:
    logits = model(images)
    return (logits + model(images.flip(-1))) / 2 if flip else logits
