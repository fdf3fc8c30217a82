"""Pooling that is deterministic on CUDA, so `trainer.deterministic=true` runs on a GPU.

CUDA's backward of adaptive average and max pooling adds gradients with atomics, and torch
refuses them in deterministic mode. Where the input size allows, these do the same pooling with
ops whose backward is deterministic everywhere.
"""

import torch.nn.functional as F
from torch import Tensor, nn


class AvgPoolTo(nn.Module):
    """nn.AdaptiveAvgPool2d(size): nothing when the input already has that size, a plain average
    pool when the size divides the input's, adaptive pooling otherwise (sizes are shapes, known
    on the host: no sync)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if height == width == self.size:
            return x
        if height % self.size == 0 and width % self.size == 0:
            return F.avg_pool2d(x, (height // self.size, width // self.size))
        return F.adaptive_avg_pool2d(x, self.size)


class GlobalMaxPool(nn.Module):
    """nn.AdaptiveMaxPool2d(1) as a max over the spatial dims (N, C, H, W) -> (N, C, 1, 1)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.amax(dim=(-2, -1), keepdim=True)
