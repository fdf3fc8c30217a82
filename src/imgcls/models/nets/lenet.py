"""LeNet-5 from PyTorch's CIFAR-10 tutorial: conv 6, conv 16, fc 120, 84, classes."""

from torch import nn

from imgcls.models.nets.pooling import AvgPoolTo


class LeNet(nn.Sequential):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 6, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            # 5x5 at 32x32 input (a no-op there); keeps the 400-wide fc1 for other sizes.
            AvgPoolTo(5),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )
