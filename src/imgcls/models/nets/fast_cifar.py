"""A net for training CIFAR-10 to ~94% in minutes, after airbench (Jordan 2024): a 2x2 stem,
three conv groups (3x3 conv, max-pool, BatchNorm, GELU, 3x3 conv, BatchNorm, GELU) at widths
64 / 256 / 256, a 3x3 max-pool to 1x1 and a linear head scaled down by 1/9. BatchNorm keeps its
scale fixed at 1 (only the shift is learned), with a fast-moving running average.
"""

from torch import Tensor, nn


def _batchnorm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, momentum=0.4, eps=1e-12)
    norm.weight.requires_grad_(False)
    return norm


class ConvGroup(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            _batchnorm(c_out),
            nn.GELU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            _batchnorm(c_out),
            nn.GELU(),
        )


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


class FastCifar(nn.Sequential):
    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (64, 256, 256),
        in_channels: int = 3,
    ) -> None:
        stem = 24
        super().__init__(
            nn.Conv2d(in_channels, stem, 2, bias=True),
            nn.GELU(),
            ConvGroup(stem, widths[0]),
            ConvGroup(widths[0], widths[1]),
            ConvGroup(widths[1], widths[2]),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(widths[2], num_classes, bias=False),
            Scale(1 / 9),
        )
