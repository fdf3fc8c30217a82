"""CIFAR10-quick (Caffe's cifar10_quick).

Three 5x5 convs (32, 32, 64) each followed by a 2x2 max-pool, then Linear 1024 -> 64 -> classes.
A common PyTorch copy of it has no activations at all, which makes everything but the pools one
linear map; we put the ReLUs of the Caffe original back.
"""

from torch import nn

from imgcls.models.nets.pooling import AvgPoolTo


class CifarQuick(nn.Sequential):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            # 4x4 at 32x32 input (a no-op there); lets larger images through unchanged in width.
            AvgPoolTo(4),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )
