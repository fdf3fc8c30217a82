"""A network by name: our own small nets, then every torchvision classification model.

`build_net("resnet50", num_classes=37)` gives torchvision's ResNet-50 with a 37-way head; extra
keyword arguments go to the model's constructor (`depth=56` for resnet_cifar, `dropout=0.2` for
an EfficientNet).
"""

import difflib
from typing import Any

import torchvision
from torch import nn

from imgcls.models.nets import OUR_NETS
from imgcls.utils.errors import UserError


def torchvision_models() -> list[str]:
    """The classification models of torchvision (not its detection, video or quantized ones)."""
    return torchvision.models.list_models(module=torchvision.models)


def available_nets() -> list[str]:
    return sorted(OUR_NETS) + torchvision_models()


def with_cifar_stem(net: nn.Module) -> nn.Module:
    """A torchvision ResNet for 32 px images: a 3x3 stride-1 stem and no max-pool, so the last
    stage still sees 4x4 (the usual CIFAR ResNet-18 reaching ~95% on CIFAR-10)."""
    if not isinstance(net, torchvision.models.ResNet):
        raise UserError("model.net.cifar_stem=true applies to torchvision ResNets only.")
    net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def build_net(name: str, num_classes: int, cifar_stem: bool = False, **kwargs: Any) -> nn.Module:
    if name in OUR_NETS:
        return OUR_NETS[name](num_classes=num_classes, **kwargs)
    if name in torchvision_models():
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        return with_cifar_stem(net) if cifar_stem else net
    close = difflib.get_close_matches(name, available_nets(), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise UserError(
        f"Unknown model.net.name={name!r}.{hint} Our nets: {', '.join(sorted(OUR_NETS))}; "
        f"torchvision: {', '.join(torchvision_models())}."
    )
