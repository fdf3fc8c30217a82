"""The CIFAR ResNet of He et al. (2016, sec. 4.2): what tutorials' hand-made ResNets mean to be.

A 3x3 stem, three stages of basic residual blocks at widths w, 2w, 4w (stride 2 between stages),
global average pooling and one linear layer. depth = 6n + 2: 20, 32, 44, 56, 110.
A common one of those loses the residual addition and misplaced `forward`; here every block adds its
shortcut, projected by a 1x1 conv where the shape changes.
"""

from torch import Tensor, nn


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    ]


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(c_in, c_out, 3, stride), nn.ReLU(inplace=True), *_conv_bn(c_out, c_out, 3, 1)
        )
        # Zero-init the last BN so each block starts as the identity (Goyal et al. 2017).
        nn.init.zeros_(self.body[-1].weight)
        same_shape = stride == 1 and c_in == c_out
        self.shortcut = (
            nn.Identity() if same_shape else nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNetCifar(nn.Sequential):
    def __init__(
        self, num_classes: int = 10, depth: int = 20, width: int = 16, in_channels: int = 3
    ) -> None:
        if (depth - 2) % 6 != 0:
            raise ValueError(f"resnet_cifar depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        layers: list[nn.Module] = [*_conv_bn(in_channels, width, 3, 1), nn.ReLU(inplace=True)]
        c_in = width
        for stage in range(3):
            c_out = width * 2**stage
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
