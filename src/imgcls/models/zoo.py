"""A network by name: our own small nets (models/nets NETS), every torchvision classification
model, timm's (`timm/<name>`, and any timm model on the Hugging Face Hub or in a folder:
`timm/hf-hub:<user>/<repo>`, `timm/local-dir:<path>`); one "Unknown ... Did you mean" line for any
other name.

`build_net("resnet50", num_classes=37)` gives torchvision's ResNet-50 with a 37-way head;
`build_net("timm/convnext_tiny", 37, pretrained=True)` timm's ConvNeXt. Extra keyword arguments
go to the model's constructor (`depth=56` for resnet_cifar, `dropout=0.2` for an EfficientNet).
`pretrained_config("resnet50:IMAGENET1K_V2", key)` names a net as its pretrained weights come, its
head and class count (`pretrained_classes`) included: a teacher to distil from; and
`pretrained_hyperparameters` says of such a net what one of our checkpoints would say (classes,
class names, preprocessing), so eval and predict take a timm model trained elsewhere.
"""

import difflib
import inspect
from pathlib import Path
from typing import Any

import torchvision
from torch import nn

from imgcls.models.nets import NETS
from imgcls.models.pretrained import (
    PUSHED_OUTPUT_KEYS,
    download_torchvision,
    find_head,
    init_head,
    load_pretrained,
    pushed_outputs,
    read_state_dict,
    timm_label_names,
    timm_pretrained_cfg,
    timm_source,
    torchvision_weights,
    weights_contract,
)
from imgcls.utils.errors import UserError, one_line


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
    """timm's net `name` (without `timm/`): a registry name, tagged or not, or a Hub repo or a
    folder (`hf-hub:`, `local-dir:`) whose config.json names the architecture and its
    arguments. Every name timm cannot build is one line, before anything is built."""
    import timm

    source, _ = timm_source(name)
    if source is None and not timm.is_model(name.split(".")[0]):  # "convnext_tiny.fb_in1k"
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join('timm/' + c for c in close)}?" if close else ""
        raise UserError(f"timm has no model {name!r}.{hint} See timm.list_models().")
    if source is not None:  # its config.json read (fetched once from the Hub) or one line
        architecture = timm_pretrained_cfg(name)["architecture"]
        if not timm.is_model(architecture):
            raise UserError(
                f"timm/{name} is a {architecture!r}, which this timm ({timm.__version__}) cannot "
                "build: upgrade timm."
            )
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
        where = (
            "They download once into the Hugging Face cache (~/.cache/huggingface): fetch them "
            "on a machine with internet and copy that cache here (HF_HUB_OFFLINE=1 then uses "
            "it), or pass model.net.weights_path=<file> and model.net.pretrained=false."
        )
        if source == "local-dir":
            where = "The folder must hold them as save_for_hf writes them (model.safetensors)."
        raise UserError(
            f"Could not get timm/{name}'s pretrained weights ({type(err).__name__}: "
            f"{one_line(err, 200)}). {where}"
        ) from err


def no_grad_checkpointing(name: str) -> UserError:
    return UserError(
        f"model.net.grad_checkpointing=true: {name} has no gradient checkpointing; timm's nets "
        "have it (timm/vit_*, timm/convnext_*, ...), or leave it false."
    )


def set_grad_checkpointing(net: nn.Module, name: str) -> None:
    """Gradient checkpointing (timm's `set_grad_checkpointing`): the blocks' activations are
    recomputed in the backward pass instead of kept, memory traded for one more forward pass of
    the blocks per step, so a big backbone trains at a batch that would not fit otherwise."""
    if not hasattr(net, "set_grad_checkpointing"):
        raise no_grad_checkpointing(name)
    try:
        net.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError) as err:  # timm's way of saying "not this net"
        raise UserError(
            f"model.net.grad_checkpointing=true: {name} does not support it in timm "
            f"({err or 'not implemented'}); leave it false."
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
    grad_checkpointing: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """The net, its pretrained weights loaded (see models/pretrained.py), its head initialized.
    `drop_path_rate`: stochastic depth, timm's `drop_path_rate` or torchvision's
    `stochastic_depth_prob` (ConvNeXt, EfficientNet), refused for a net with neither (and for
    torchvision's Swin and MaxViT, whose builders fix it themselves). `grad_checkpointing`: timm's
    (`set_grad_checkpointing`), refused for other nets."""
    if drop_path_rate is not None:
        kwargs[drop_path_argument(name, drop_path_rate)] = drop_path_rate
    source = source_of(name)
    if grad_checkpointing and source != "timm":  # ours and torchvision's: before any building
        raise no_grad_checkpointing(name)
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
    if grad_checkpointing:
        set_grad_checkpointing(net, name)
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
    download of the weights (torchvision's weight metadata, timm's pretrained config)."""
    name = net["name"]
    if not name.startswith("timm/"):
        return len(torchvision_weights(name, net["weights"]).meta["categories"])
    pretrained = timm_pretrained_cfg(name.removeprefix("timm/"))
    if pretrained is None:
        raise UserError(f"timm has no pretrained weights for {name}.")
    return int(pretrained["num_classes"])


def names_a_pretrained_net(path: str | Path) -> bool:
    """Whether a `ckpt_path` names a timm model with its own weights (`timm/local-dir:DIR`,
    `timm/hf-hub:<user>/<repo>`, `timm/<name>`) rather than a checkpoint file."""
    return str(path).startswith("timm/") and not Path(path).exists()


def pretrained_hyperparameters(spec: str, key: str = "ckpt_path") -> dict[str, Any]:
    """What one of our checkpoints says of its model, said of a timm model with its pretrained
    weights (a model trained elsewhere, or pushed by `imgcls-push`): its net, classes, class
    names (its config's `label_names`) and input contract (its pretrained config's mean, std,
    size and crop), so eval and predict take it as they take a checkpoint. A model imgcls-push
    wrote also says its task and its temperature or per-class `thresholds` (by class name; the
    one key a classifier is not built with: the caller sets them)."""
    net = pretrained_config(spec, key)
    if not spec.startswith("timm/"):
        raise UserError(
            f"{key}={spec}: pass one of our checkpoints (.ckpt) or a timm model with its weights: "
            "timm/local-dir:<folder>, timm/hf-hub:<user>/<repo> or timm/<name>."
        )
    pretrained = timm_pretrained_cfg(spec.removeprefix("timm/"))
    if pretrained is None:
        raise UserError(f"{key}={spec}: timm has no pretrained weights for it.")
    contract = weights_contract(net)
    assert contract is not None  # a pretrained timm config always resolves one
    outputs = pushed_outputs(spec.removeprefix("timm/"))
    said = {key: outputs[key] for key in PUSHED_OUTPUT_KEYS if key in outputs}
    return {
        "net": net,
        "num_classes": int(pretrained["num_classes"]),
        "optimizer": {},
        "task": outputs.get("task", "multiclass"),
        "class_names": timm_label_names(pretrained),
        "preprocessing": contract.as_dict(),
        **said,
    }
