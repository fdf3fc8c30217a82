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


def build_net(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    if name in OUR_NETS:
        return OUR_NETS[name](num_classes=num_classes, **kwargs)
    if name in torchvision_models():
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    close = difflib.get_close_matches(name, available_nets(), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise UserError(
        f"Unknown model.net.name={name!r}.{hint} Our nets: {', '.join(sorted(OUR_NETS))}; "
        f"torchvision: {', '.join(torchvision_models())}."
    )
