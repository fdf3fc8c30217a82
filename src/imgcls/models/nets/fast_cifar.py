"""A net for training CIFAR-10 to ~94% in minutes, after airbench (Jordan 2024): a 2x2 stem,
three conv groups (3x3 conv, max-pool, BatchNorm, GELU, 3x3 conv, BatchNorm, GELU) at widths
64 / 256 / 256, a global max-pool and a linear head scaled down by 1/9. BatchNorm keeps its
scale fixed at 1 (only the shift is learned), with a fast-moving running average.

Two of airbench's initializations, which buy accuracy in the first epochs where short schedules
spend most of their time:
- the 3x3 convs start as identities on their first input channels (dirac), so the untrained net
  passes its input through instead of noise;
- the stem is a fixed patch-whitening filter bank: `init_from_data` sets it from the first
  `data_init_images` training images (the classifier calls it before the first step of a fresh
  run: models/classifier.py), to the eigenvectors of the 2x2 patch covariance scaled by
  1/sqrt(eigenvalue), with their negatives (24 = 2 x 3 x 2 x 2). Only its bias learns.
"""

import torch
from torch import Tensor, nn

from imgcls.models.nets.pooling import GlobalMaxPool


def _batchnorm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, momentum=0.4, eps=1e-12)
    norm.weight.requires_grad_(False)
    return norm


def _identity_conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


class ConvGroup(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            _identity_conv(c_in, c_out),
            nn.MaxPool2d(2),
            _batchnorm(c_out),
            nn.GELU(),
            _identity_conv(c_out, c_out),
            _batchnorm(c_out),
            nn.GELU(),
        )


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


def whitening_filters(covariance: Tensor, eps: float) -> Tensor:
    """Rows: the eigenvectors of `covariance` scaled by 1/sqrt(eigenvalue + eps), largest
    first. Eigenvalues are clamped at 0: a small or uniform sample (a rank-deficient covariance)
    leaves some a rounding error below zero, whose square root would be NaN."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())
    scale = (eigenvalues.clamp(min=0) + eps).rsqrt()
    return (eigenvectors.T * scale[:, None]).flip(0)


class FastCifar(nn.Sequential):
    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (64, 256, 256),
        in_channels: int = 3,
        data_init_images: int = 5000,
    ) -> None:
        stem = nn.Conv2d(in_channels, 2 * in_channels * 2 * 2, 2, bias=True)
        stem.weight.requires_grad_(False)
        super().__init__(
            stem,
            nn.GELU(),
            ConvGroup(stem.out_channels, widths[0]),
            ConvGroup(widths[0], widths[1]),
            ConvGroup(widths[1], widths[2]),
            GlobalMaxPool(),
            nn.Flatten(),
            nn.Linear(widths[2], num_classes, bias=False),
            Scale(1 / 9),
        )
        self.data_init_images = data_init_images  # how many the stem is whitened from

    @torch.no_grad()
    def init_from_data(self, images: Tensor, eps: float = 5e-4) -> None:
        """Whiten the stem from normalized training images (n, c, h, w); a few thousand do."""
        stem = self[0]
        size = stem.kernel_size
        # float64 here too: a TF32 matmul (CUDA, float32_matmul_precision=high) would blur it
        patches = images.double().unfold(2, size[0], 1).unfold(3, size[1], 1)
        # (n, c, h', w', kh, kw) -> one row per patch, laid out as the conv's (c, kh, kw)
        patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(0, 2)
        filters = whitening_filters(patches.T @ patches / len(patches), eps)
        filters = filters.reshape(-1, stem.in_channels, *size)
        stem.weight.copy_(torch.cat([filters, -filters]).to(stem.weight))
