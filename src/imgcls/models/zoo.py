"""A network by name: our own small nets (models/nets NETS), every torchvision classification
model, timm's (`timm/<name>`); one "Unknown ... Did you mean" line for any other name.

`build_net("resnet50", num_classes=37)` gives torchvision's ResNet-50 with a 37-way head;
`build_net("timm/convnext_tiny", 37, pretrained=True)` timm's ConvNeXt. Extra keyword arguments
go to the model's constructor (`depth=56` for resnet_cifar, `dropout=0.2` for an EfficientNet).
`pretrained_config("resnet50:IMAGENET1K_V2", key)` names a net as its pretrained weights come, its
head and class count (`pretrained_classes`) included: a teacher to distil from.
"""

import difflib
import inspect
from typing import Any

import torchvision
from torch import nn

from imgcls.models.nets import NETS
from imgcls.models.pretrained import (
    download_torchvision,
    find_head,
    init_head,
    load_pretrained,
    read_state_dict,
    torchvision_weights,
)
from imgcls.utils.errors import UserError


def torchvision_models() -> list[str]:
    """The classification models of torchvision (not its detection, video or quantized ones)."""
    return torchvision.models.list_models(module=torchvision.models)


def available_nets() -> list[str]:
    return sorted(NETS) + torchvision_models()


def source_of(name: str, key: str = "model.net.name") -> str:
    """Where the net `name` comes from: "timm", "ours" or "torchvision"; one line (naming the
    config `key`) for a name none of them has."""
    if name.startswith("timm/"):
        return "timm"
    if name in NETS:
        return "ours"
    if name in torchvision_models():
        return "torchvision"
    raise NETS.unknown(name, among=available_nets(), key=key)


def with_cifar_stem(net: nn.Module) -> nn.Module:
    """A torchvision ResNet for 32 px images: a 3x3 stride-1 stem and no max-pool, so the last
    stage still sees 4x4 (the usual CIFAR ResNet-18 reaching ~95% on CIFAR-10)."""
    if not isinstance(net, torchvision.models.ResNet):
        raise UserError("model.net.cifar_stem=true applies to torchvision ResNets only.")
    net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def timm_net(name: str, num_classes: int, pretrained: bool, **kwargs: Any) -> nn.Module:
    import timm

    if not timm.is_model(name.split(".")[0]):  # "convnext_tiny" or tagged "convnext_tiny.fb_in1k"
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join('timm/' + c for c in close)}?" if close else ""
        raise UserError(f"timm has no model {name!r}.{hint} See timm.list_models().")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except TypeError as err:
        if "drop_path_rate" not in str(err):
            raise
        raise UserError(
            f"model.net.drop_path_rate: timm/{name} has no stochastic depth; leave it null."
        ) from err
    except Exception as err:
        if not pretrained:
            raise
        raise UserError(
            f"Could not get timm/{name}'s pretrained weights ({type(err).__name__}: {err}). They "
            "download once into the Hugging Face cache (~/.cache/huggingface): fetch them on a "
            "machine with internet and copy that cache here (HF_HUB_OFFLINE=1 then uses it), or "
            "pass model.net.weights_path=<file> and model.net.pretrained=false."
        ) from err


def drop_path_argument(name: str, rate: float) -> str:
    """The constructor argument that sets a net's stochastic depth, or one line if it has none."""
    if not 0 <= rate < 1:
        raise UserError(f"model.net.drop_path_rate={rate} must be in [0, 1).")
    if name.startswith("timm/"):
        return "drop_path_rate"  # timm's nets with blocks take it; build_net checks the others
    if name in torchvision_models():
        builder = torchvision.models.get_model_builder(name)
        module = inspect.getmodule(builder)
        takers = [
            cls
            for cls in vars(module).values()
            if isinstance(cls, type)
            and issubclass(cls, nn.Module)
            and "stochastic_depth_prob" in inspect.signature(cls.__init__).parameters
        ]
        if takers:
            return "stochastic_depth_prob"
    raise UserError(
        f"model.net.drop_path_rate: {name} has no stochastic depth to set. torchvision's ConvNeXt "
        "and EfficientNet have it, and timm's nets with blocks (timm/vit_*, "
        "timm/convnext_*, timm/resnet50, ...); or leave model.net.drop_path_rate=null."
    )


# Where a net's initial weights come from (none of them: from scratch). A checkpoint's own weights
# replace them; a data-dependent init is for nets from scratch only.
PRETRAINED_KEYS = {"weights": None, "weights_path": None, "pretrained": False}


def build_net(
    name: str,
    num_classes: int,
    cifar_stem: bool = False,
    weights: str | None = None,
    pretrained: bool = False,
    weights_path: str | None = None,
    head_init: str = "default",
    drop_path_rate: float | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The net, its pretrained weights loaded (see models/pretrained.py), its head initialized.
    `drop_path_rate`: stochastic depth, timm's `drop_path_rate` or torchvision's
    `stochastic_depth_prob` (ConvNeXt, EfficientNet), refused for a net with neither (and for
    torchvision's Swin and MaxViT, whose builders fix it themselves)."""
    if drop_path_rate is not None:
        kwargs[drop_path_argument(name, drop_path_rate)] = drop_path_rate
    source = source_of(name)
    if cifar_stem and source != "torchvision":
        raise UserError("model.net.cifar_stem=true applies to torchvision ResNets only.")
    if pretrained and source != "timm":
        raise UserError(
            "model.net.pretrained is for timm/ models; torchvision's take "
            "model.net.weights=DEFAULT (or a named set such as IMAGENET1K_V2)."
        )
    if source == "timm":
        net = timm_net(name.removeprefix("timm/"), num_classes, pretrained, **kwargs)
    elif source == "ours":
        net = NETS[name](num_classes=num_classes, **kwargs)
    else:
        try:
            net = torchvision.models.get_model(
                name, weights=None, num_classes=num_classes, **kwargs
            )
        except TypeError as err:
            if "multiple values for keyword argument 'stochastic_depth_prob'" not in str(err):
                raise
            raise UserError(
                f"model.net.drop_path_rate: torchvision's {name} sets its stochastic depth "
                f"itself; use timm's (timm/{name.split('_')[0]}_...) or leave it null."
            ) from err
        net = with_cifar_stem(net) if cifar_stem else net
    head = find_head(net, num_classes)
    if weights and weights_path:
        raise UserError("Pass model.net.weights or model.net.weights_path, not both.")
    if weights:
        if name not in torchvision_models():
            raise UserError(f"model.net.weights names torchvision weights; {name} has none.")
        load_pretrained(net, download_torchvision(name, weights), head, f"{name} {weights}")
    elif weights_path:
        load_pretrained(net, read_state_dict(weights_path), head, str(weights_path))
    init_head(net.get_submodule(head), head_init)
    return net


def pretrained_config(spec: str, key: str) -> dict[str, Any]:
    """The `model.net` config of a net with its pretrained weights, by the name the zoo knows:
    `timm/<name>` (timm's weights) or a torchvision name, `name:WEIGHTS` for a named set (DEFAULT
    where none is said). `key`: the config key that named it, for its one line."""
    if spec.startswith("timm/"):  # timm's names may hold a colon of their own (hf-hub:...)
        return {"name": spec, "pretrained": True}
    name, _, weights = spec.partition(":")
    if source_of(name, key) == "ours":
        raise UserError(f"{key}={spec}: our nets have no pretrained weights to start from.")
    return {"name": name, "weights": weights or "DEFAULT"}


def pretrained_classes(net: dict[str, Any]) -> int:
    """How many classes the weights of a `pretrained_config` predict, known without a
    download (torchvision's weight metadata, timm's pretrained config)."""
    name = net["name"]
    if not name.startswith("timm/"):
        return len(torchvision_weights(name, net["weights"]).meta["categories"])
    import timm

    pretrained = timm.models.get_pretrained_cfg(name.removeprefix("timm/"))
    if pretrained is None:
        raise UserError(f"timm has no pretrained weights for {name}.")
    return pretrained.num_classes
