"""LoRA (Hu et al. 2021) through peft: a pretrained backbone stays fixed and learns a low-rank
update `W + (alpha / rank) * B @ A` of chosen layers; the classifier head trains whole.

`model.lora.rank=8` adapts the layers `model.lora.targets` names (module names or their dotted
ends, peft's rule), by default per family: timm's ViTs their attention and MLP linears
(`attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2`), ConvNeXts (timm's and torchvision's) their MLP
linears. Only Linear layers and ungrouped Conv2d are adapted, the two whose update merges into
plain weights. Adapters are injected in place (`peft.inject_adapter_in_model`): the net keeps
its class, its methods (timm's `group_matcher` for layer decay, `no_weight_decay`) and its
parameter names, an adapted layer's own becoming `<layer>.base_layer.*` beside its
`<layer>.lora_A.default.weight` and `lora_B`.

A checkpoint holds the adapted net (what a resume continues) and its `lora` hyperparameters with
the targets resolved. What leaves a run is plain: `merged_weights` folds a checkpoint's adapters
into its weights without importing peft (models/loading.py: eval, predict, export, push, a
teacher, as peft's own merge would: tests/models/test_lora.py holds them to it). peft (which
imports transformers: seconds) is imported only where a net is adapted.
"""

from collections.abc import Iterable, Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)

ADAPTER = "default"  # peft's adapter name: one adapter per net
# the layers adapted by default, by the net's family (its class or a base class, and where that
# class comes from): the attention and MLP linears of a transformer block, a ConvNeXt block's MLP
FAMILY_TARGETS: dict[tuple[str, str], tuple[str, ...]] = {
    ("timm.", "VisionTransformer"): ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
    ("timm.", "ConvNeXt"): ("mlp.fc1", "mlp.fc2"),
    ("torchvision.", "ConvNeXt"): ("block.3", "block.5"),  # CNBlock's two pointwise linears
}


def lora_on(cfg: Mapping[str, Any] | None) -> bool:
    """Whether a `model.lora` config adapts the net (rank 0 or null: off)."""
    return bool(cfg) and bool(cfg.get("rank"))


def default_targets(net: nn.Module) -> tuple[str, ...] | None:
    """The family's layers to adapt, or None for a family without defaults."""
    for cls in type(net).__mro__:
        for (source, name), targets in FAMILY_TARGETS.items():
            if cls.__name__ == name and cls.__module__.startswith(source):
                return targets
    return None


def matches(name: str, targets: Iterable[str]) -> bool:
    """peft's rule for a list of targets: the module's name, or its end after a dot."""
    return any(name == t or name.endswith("." + t) for t in targets)


def target_layers(net: nn.Module, targets: list[str], head: str) -> list[str]:
    """The names of the layers `targets` picks (the head never: it trains whole), each one that
    can merge back (Linear, ungrouped Conv2d), or one line."""
    in_head = head + "."
    names = [
        name
        for name, module in net.named_modules()
        if name and matches(name, targets) and name != head and not name.startswith(in_head)
    ]
    if not names:
        linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and n != head]
        raise UserError(
            f"model.lora.targets={targets} matches no layer of {type(net).__name__} besides its "
            f"head; its linear layers are named like {', '.join(linears[:4]) or '(none)'}."
        )
    for name in names:
        module = net.get_submodule(name)
        plain = isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv2d) and module.groups == 1
        )
        if not plain:
            raise UserError(
                f"model.lora.targets picks {name} ({type(module).__name__}"
                + (f", groups={module.groups}" if isinstance(module, nn.Conv2d) else "")
                + "): LoRA adapts Linear and ungrouped Conv2d layers only, whose update merges "
                "into plain weights; name those."
            )
    return names


def apply_lora(net: nn.Module, cfg: Mapping[str, Any], head: str) -> dict[str, Any]:
    """Adapt `net` in place per `cfg` (`model.lora`): every parameter frozen but the adapters and
    the head (`head`: its module name). Returns the config as it was applied, its targets
    resolved (what a checkpoint records)."""
    rank, alpha, dropout = cfg["rank"], cfg.get("alpha"), cfg.get("dropout") or 0.0
    targets = cfg.get("targets")
    if targets is None:
        targets = default_targets(net)
        if targets is None:
            raise UserError(
                f"model.lora has no default layers for {type(net).__name__} (it has for timm's "
                "ViTs and ConvNeXts, torchvision's ConvNeXts): name them, "
                "model.lora.targets=[<layer name or its end>, ...]."
            )
    targets = [str(t) for t in targets]
    names = target_layers(net, targets, head)
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none"
    )
    inject_adapter_in_model(config, net, adapter_name=ADAPTER)
    if hasattr(net, "peft_config"):  # peft's record, not a module: nothing of ours reads it
        del net.peft_config
    net.get_submodule(head).requires_grad_(True)
    return {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": targets}


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def adapted(net: nn.Module) -> bool:
    return any(is_adapter(name) for name, _ in net.named_parameters())


def fixed_parameters(net: nn.Module, head: str) -> list[nn.Parameter]:
    """The parameters a LoRA run never trains (every one but the adapters and the head); none
    for a net without adapters. What the optimizer and the EMA leave out."""
    if not adapted(net):
        return []
    in_head = head + "."
    return [
        p
        for name, p in net.named_parameters()
        if not is_adapter(name) and not name.startswith(in_head)
    ]


def describe(net: nn.Module, head: str, cfg: Mapping[str, Any]) -> str:
    """The line a LoRA run logs at its start: what trains, of how much."""
    total = sum(p.numel() for p in net.parameters())
    adapters = sum(p.numel() for name, p in net.named_parameters() if is_adapter(name))
    head_size = sum(p.numel() for p in net.get_submodule(head).parameters())
    layers = sum(1 for name, _ in net.named_modules() if name.endswith(".lora_A"))
    return (
        f"LoRA rank {cfg['rank']} (alpha {cfg['alpha']}) on {layers} layers "
        f"({', '.join(cfg['targets'])}): {count(adapters + head_size)} of {count(total)} "
        f"parameters train (adapters {count(adapters)}, head {count(head_size)})"
    )


def count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def merged_weights(state: Mapping[str, Tensor], cfg: Mapping[str, Any]) -> dict[str, Tensor]:
    """A state_dict of an adapted net (keys with any prefix, `net.` in a checkpoint) as the plain
    net's: each `<layer>.base_layer.*` back at `<layer>.*`, its weight plus the adapter's update
    `(alpha / rank) * B @ A` (as peft merges a Linear or Conv2d), the adapters dropped. Plain
    tensor arithmetic: peft is not imported."""
    scaling = cfg["alpha"] / cfg["rank"]
    merged: dict[str, Tensor] = {}
    for key, value in state.items():
        if is_adapter(key):
            continue
        if ".base_layer." not in key:
            merged[key] = value
            continue
        layer, _, leaf = key.rpartition(".base_layer.")
        if leaf == "weight":
            a = state[f"{layer}.lora_A.{ADAPTER}.weight"].float()
            b = state[f"{layer}.lora_B.{ADAPTER}.weight"].float()
            value = (value.float() + scaling * delta(a, b)).to(value.dtype)
        merged[f"{layer}.{leaf}"] = value
    return merged


def delta(a: Tensor, b: Tensor) -> Tensor:
    """B @ A for a Linear (A: rank x in, B: out x rank) or a Conv2d (A: rank x in x kh x kw,
    B: out x rank x 1 x 1), as peft's `get_delta_weight` computes it."""
    if a.ndim == 2:
        return b @ a
    if a.shape[2:] == (1, 1):
        return (b.flatten(1) @ a.flatten(1))[:, :, None, None]
    return F.conv2d(a.permute(1, 0, 2, 3), b).permute(1, 0, 2, 3)


def check_resume(saved: Mapping[str, Any] | None, given: Mapping[str, Any] | None) -> None:
    """A resumed run adapts the net as its checkpoint did (rank, alpha, and the targets where
    the config names them; dropout may change), or one line before any work."""
    if not lora_on(saved) and not lora_on(given):
        return
    if lora_on(saved) and lora_on(given):
        said = {"rank": given["rank"], "alpha": given.get("alpha")}
        ours = {"rank": saved["rank"], "alpha": saved.get("alpha")}
        if given.get("targets") is not None:
            said["targets"] = [str(t) for t in given["targets"]]
            ours["targets"] = list(saved["targets"])
        if said == ours:
            return
    what = (
        f"model.lora.rank={saved['rank']} alpha={saved['alpha']} targets={list(saved['targets'])}"
        if lora_on(saved)
        else "no LoRA (model.lora.rank=null)"
    )
    raise UserError(f"The checkpoint was trained with {what}: resume with the same model.lora.")
