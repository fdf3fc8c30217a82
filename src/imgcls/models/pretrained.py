"""Pretrained weights for a net, from wherever the user has them, and the net's classifier head.

Three sources, one rule: the net is built for the run's class count, then every pretrained
tensor whose name and shape fit is copied in. The head, sized for another class count (1000 for
ImageNet weights), is what does not fit, and keeps its fresh init (`head_init`). Anything else
that does not fit means the weights belong to another architecture, and the run stops saying so.

- torchvision weight enums: `model.net.weights=DEFAULT` (or `IMAGENET1K_V2`, ...), downloaded
  once into torch's hub cache (`$TORCH_HOME/hub/checkpoints`);
- timm models: `model.net.name=timm/convnext_tiny model.net.pretrained=true` (Hugging Face cache),
  any timm model on the Hub by its repo (`timm/hf-hub:<user>/<repo>`) or in a folder timm's
  `save_for_hf` (or `imgcls-push --local`) wrote (`timm/local-dir:<path>`): the architecture, its
  arguments, the class names and the preprocessing come from that model's own config.json;
- a local file: `model.net.weights_path=FILE`, a state_dict (`.pth`, `.safetensors`), a
  torchvision reference checkpoint (`{"model": ...}`) or one of our own checkpoints.
"""

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch
import torchvision
from torch import Tensor, nn

from imgcls.input_contract import InputContract
from imgcls.models.lora import lora_on, merged_weights
from imgcls.utils.errors import UserError, one_line
from imgcls.utils.logging import get_logger

log = get_logger(__name__)

HEAD_INITS = ("default", "xavier", "zeros")
# Prefixes wrappers put in front of a net's own names: DataParallel/DDP, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def find_head(net: nn.Module, num_classes: int) -> str:
    """The name of the classifier head. timm's nets say which it is (`get_classifier`); for ours
    and torchvision's it is the last Linear (or 1x1 Conv, SqueezeNet) with one output per class."""
    if hasattr(net, "get_classifier"):
        head = net.get_classifier()
        name = next((n for n, m in net.named_modules() if m is head), None)
        if name:
            return name
    found = None
    for name, module in net.named_modules():
        out = getattr(module, "out_features", None)
        if isinstance(module, nn.Conv2d):
            out = module.out_channels
        if isinstance(module, nn.Linear | nn.Conv2d) and out == num_classes:
            found = name
    if found is None:
        raise UserError(f"{type(net).__name__} has no layer with {num_classes} outputs (a head).")
    return found


def init_head(head: nn.Module, how: str) -> None:
    """`xavier`: xavier-uniform weights, as transfer-learning tutorials do; `zeros`: an all-zero
    head, which starts every class equal; `default`: the layer's own init."""
    if how not in HEAD_INITS:
        raise UserError(f"model.net.head_init must be one of {', '.join(HEAD_INITS)}, got {how!r}.")
    if how == "default":
        return
    init = nn.init.xavier_uniform_ if how == "xavier" else nn.init.zeros_
    init(head.weight)
    if head.bias is not None:
        nn.init.zeros_(head.bias)


def torchvision_weights(name: str, weights: str) -> torchvision.models.WeightsEnum:
    enum = torchvision.models.get_model_weights(name)
    try:
        return enum.verify(weights)
    except (KeyError, ValueError) as err:
        raise UserError(
            f"{name} has no weights {weights!r}. It has: {', '.join(enum.__members__)}."
        ) from err


def download_torchvision(name: str, weights: str) -> dict[str, Tensor]:
    entry = torchvision_weights(name, weights)
    try:
        return entry.get_state_dict(progress=True, check_hash=True)
    except (URLError, OSError, RuntimeError) as err:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(entry.url).name
        raise UserError(
            f"Could not get {name} weights {entry} ({err}). They download once from {entry.url} "
            f"to {cache}: copy that file there from a machine with internet, or pass "
            "model.net.weights_path=<file> and model.net.weights=null."
        ) from err


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A net's state_dict from any file that holds one, with wrapper prefixes removed. Loads no
    pickled code: `weights_only=True`, or safetensors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model.net.weights_path={path} is not a file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled objects, truncated files, not a torch file at all
        raise UserError(f"Cannot read weights from {path}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # Lightning's
        lora = (state.get("hyper_parameters") or {}).get("lora")
        weights = state["state_dict"]
        if lora_on(lora):  # a LoRA run's: its adapters merged, the plain net's weights
            weights = merged_weights(weights, lora)
        state = {k[4:]: v for k, v in weights.items() if k.startswith("net.")}
    elif isinstance(state, dict) and isinstance(state.get("model"), dict):  # torchvision refs
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{path} holds no state_dict of tensors.")
    return {strip_wrappers(key): value for key, value in state.items()}


def strip_wrappers(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key.replace("._orig_mod.", ".")


def load_pretrained(net: nn.Module, state: dict[str, Tensor], head: str, source: str) -> None:
    """Copy every tensor of `state` that fits; only the head may be left out."""
    own = net.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    in_head = head + "."
    misfits = [k for k in state if k not in fits and not k.startswith(in_head)]
    missing = [k for k in own if k not in fits and not k.startswith(in_head)]
    if misfits or missing:
        example = (misfits or missing)[0]
        raise UserError(
            f"The weights in {source} do not fit this net: {len(misfits)} of their tensors and "
            f"{len(missing)} of the net's have no match (e.g. {example!r}). Use the architecture "
            "they were saved from (model.net.name and its arguments)."
        )
    net.load_state_dict(fits, strict=False)
    replaced = any(k.startswith(in_head) for k in own if k not in fits)
    log.info(
        f"Loaded {len(fits)} pretrained tensors from {source}"
        + (f"; new head {head!r} for this run's classes" if replaced else "")
    )


def timm_source(name: str) -> tuple[str | None, str]:
    """(source, id) of a timm model name without `timm/`: (None, name) for timm's own registry
    (`convnext_tiny`, `convnext_tiny.fb_in1k`), ("hf-hub", "<user>/<repo>") or ("local-dir",
    "<path>"); one line for a malformed one (an unknown source, nothing after the colon)."""
    from timm.models import parse_model_name

    try:
        return parse_model_name(name)
    except ValueError as err:
        raise UserError(
            f"timm/{name}: {err} Name a timm model as timm/<name>, timm/hf-hub:<user>/<repo> "
            "or timm/local-dir:<folder>."
        ) from err


def timm_pretrained_cfg(name: str) -> dict[str, Any] | None:
    """timm's pretrained config of a timm model name without `timm/` (its `architecture` among
    the keys), None where timm's registry knows the net but no weights for it. A Hub repo's or a
    folder's comes from its config.json (the Hub's: fetched once into the Hugging Face cache,
    read from there offline); one line where there is none to read."""
    import timm
    from timm.models import load_model_config_from_hf
    from timm.models._hub import load_model_config_from_path  # what timm's local-dir: reads

    source, model_id = timm_source(name)
    if source is None:
        found = timm.models.get_pretrained_cfg(name)
        return None if found is None else found.to_dict()
    if source == "local-dir":
        folder = Path(model_id).expanduser()
        if not (folder / "config.json").is_file():
            what = "has no config.json" if folder.is_dir() else "is not a folder"
            raise UserError(
                f"timm/local-dir:{model_id} {what}: name a folder timm's save_for_hf (or "
                "imgcls-push --local) wrote, config.json and model.safetensors."
            )
        try:
            cfg, architecture, _ = load_model_config_from_path(folder)
        except (KeyError, ValueError, TypeError) as err:  # not timm's layout, unreadable JSON
            raise UserError(
                f"timm/local-dir:{model_id}: its config.json is not timm's ({one_line(err)})."
            ) from err
    else:
        try:
            cfg, architecture, _ = load_model_config_from_hf(model_id)
        except Exception as err:  # offline and not cached, no such repo, no config.json
            from huggingface_hub import constants

            raise UserError(
                f"timm/hf-hub:{model_id} could not be fetched from the Hugging Face Hub "
                f"({type(err).__name__}: {one_line(err, 200)}). Check the repo's name; offline "
                f"(HF_HUB_OFFLINE=1) it must be in the Hugging Face cache ({constants.HF_HUB_CACHE}"
                "): fetch it once on a machine with internet and copy that cache here, or name a "
                "folder that holds it: timm/local-dir:<folder>."
            ) from err
    return {**cfg, "architecture": architecture}


# what a pushed model's outputs are read with besides its task: its objective's card's keys
# (a multiclass model's temperature, a multi-label one's threshold per class name)
PUSHED_OUTPUT_KEYS = ("temperature", "thresholds")


def pushed_outputs(name: str) -> dict[str, Any]:
    """How the outputs of a model imgcls-push wrote are read, from the `imgcls` key it adds to
    timm's config.json (timm reads past it): the task, and the temperature or each class's
    threshold. {} for a model without one (timm's registry, or pushed by other tools)."""
    source, model_id = timm_source(name)
    if source == "local-dir":
        path = Path(model_id).expanduser() / "config.json"
    elif source == "hf-hub":
        from timm.models._hub import download_from_hf

        path = Path(download_from_hf(model_id, "config.json"))  # cached when it was read
    else:
        return {}
    outputs = json.loads(path.read_text()).get("imgcls")
    return outputs if isinstance(outputs, dict) else {}


def timm_label_names(cfg: Mapping[str, Any]) -> list[str] | None:
    """The class names a timm model's config gives its outputs (`label_names`: a list, or a dict
    from class index to name), None where it names none or not every one."""
    names = cfg.get("label_names")
    if isinstance(names, Mapping):
        by_index = {int(k): str(v) for k, v in names.items()}
        names = [by_index.get(i) for i in range(len(by_index))]
    if not names or any(n is None for n in names) or len(names) != cfg.get("num_classes"):
        return None
    return [str(n) for n in names]


def weights_contract(net: Mapping[str, Any]) -> InputContract | None:
    """The input contract pretrained weights were trained with (a `model.net` config):
    torchvision's weight transforms, timm's pretrained config (a Hub repo's or a folder's own
    config.json for `timm/hf-hub:` and `timm/local-dir:`), or the contract of one of our
    checkpoints named by `weights_path`; None for a net from scratch or from a plain state_dict
    file (the data config decides then)."""
    name, weights, path = net.get("name", ""), net.get("weights"), net.get("weights_path")
    if path and str(path).endswith(".ckpt"):
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return InputContract.from_dict(saved["hyper_parameters"]["preprocessing"])
        except Exception:  # not one of ours: read_state_dict says what is wrong with it
            return None
    if weights and not name.startswith("timm/"):
        preset = torchvision_weights(name, weights).transforms()
        return InputContract(preset.resize_size[0], preset.crop_size[0], preset.mean, preset.std)
    if name.startswith("timm/") and net.get("pretrained"):
        from timm.data import resolve_data_config

        pretrained = timm_pretrained_cfg(name.removeprefix("timm/"))
        if pretrained is None:
            return None
        resolved = resolve_data_config(pretrained_cfg=pretrained)
        # a net built at another size than its weights' (timm's `img_size`: a ViT's position
        # embedding resampled) is fed that size, with the weights' crop_pct and statistics
        crop = int(net.get("img_size") or resolved["input_size"][-1])
        resize = math.floor(crop / resolved["crop_pct"])
        return InputContract(resize, crop, tuple(resolved["mean"]), tuple(resolved["std"]))
    return None
