"""What an image goes through before a net sees it, known in one place.

Evaluation resizes the short side to `resize`, centre-crops `crop` x `crop`, and normalizes the
[0, 255] pixels with `mean` and `std` (given for [0, 1]). The data config decides it for a net
trained from scratch; pretrained weights bring their own (models/pretrained.weights_contract).
It travels in every checkpoint (`as_dict`), so eval, predict, export and the pictures in
TensorBoard use exactly what training used (run/settle.py). It sits at the package's ground
floor: data and models both read it.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# torchvision's ImageNet statistics: the default for photos and for pretrained backbones.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputContract:
    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    _scale_shift: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "InputContract":
        """From `as_dict`'s form, as a checkpoint holds it."""
        mean, std = tuple(values["mean"]), tuple(values["std"])
        return cls(int(values["resize"]), int(values["crop"]), mean, std)

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for a checkpoint's hyperparameters."""
        return {
            "resize": self.resize,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def _affine(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._scale_shift:
            # float32 whatever the default dtype (a half-precision plugin's forward context
            # sets it): the same normalization in every context
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self._scale_shift[device] = (1.0 / (255.0 * std), -mean / std)
        return self._scale_shift[device]

    def normalize(self, images: Tensor) -> Tensor:
        """[0, 255] pixels (uint8 or float) -> (x / 255 - mean) / std, as one multiply-add."""
        scale, shift = self._affine(images.device)
        return torch.addcmul(shift, images.float(), scale)

    def denormalize(self, images: Tensor) -> Tensor:
        """Normalized images back to viewable uint8 pixels."""
        scale, shift = self._affine(images.device)
        return ((images.float() - shift) / scale).round().clamp(0, 255).to(torch.uint8)
