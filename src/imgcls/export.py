"""Ship a trained net: `python export.py ckpt_path=... format=onnx|torchscript|state_dict|
safetensors` or `imgcls-export`.

The net alone is exported (float NCHW RGB input, normalized with the card's mean / std; logits
out), with a batch axis of any size. Every export is checked by loading the written file back,
with the runtime its users will use, and comparing its logits with PyTorch's on a random batch.
`model_card.json` beside it says what the net expects and how well it did.
"""

import hashlib
import inspect
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from imgcls.input_contract import InputContract
from imgcls.models.loading import classifier_from_checkpoint, read_checkpoint
from imgcls.models.zoo import PRETRAINED_KEYS, build_net
from imgcls.run.settle import settle
from imgcls.run.task import task_main
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.rich_utils import print_metrics_table

log = get_logger(__name__)
FILE_NAMES = {
    "onnx": "model.onnx",
    "torchscript": "model.torchscript.pt",
    "state_dict": "model.pth",
    "safetensors": "model.safetensors",
}


def export_onnx(net: nn.Module, example: Tensor, path: Path, opset: int) -> Callable:
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        net,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={next(iter(inspect.signature(net.forward).parameters)): {0: batch}},
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def export_torchscript(net: nn.Module, example: Tensor, path: Path) -> Callable:
    with warnings.catch_warnings():  # torch 2.9+ deprecates TorchScript; it still works
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.trace(net, example).save(str(path))
        return torch.jit.load(str(path))


def export_weights(net: nn.Module, path: Path, net_cfg: dict, num_classes: int) -> Callable:
    """The net's own state_dict, whose keys are torchvision's when the net is torchvision's:
    `torchvision.models.resnet50(num_classes=N).load_state_dict(...)` takes it as it is."""
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file, save_file

        save_file(state, str(path), metadata={"format": "pt"})
        loaded = load_file(str(path))
    else:
        torch.save(state, path)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    fresh = build_net(num_classes=num_classes, **{**net_cfg, **PRETRAINED_KEYS}).eval()
    fresh.load_state_dict(loaded)
    return fresh


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_metrics(checkpoint: dict[str, Any], ckpt_path: Path) -> dict[str, float]:
    """The monitored metric stored in the checkpoint, and the run's metrics.json if it is there
    (`<run>/checkpoints/x.ckpt` -> `<run>/metrics.json`)."""
    metrics = {}
    for state in checkpoint.get("callbacks", {}).values():
        if state.get("monitor") and state.get("best_model_score") is not None:
            metrics[f"{state['monitor']} (best, checkpointing)"] = float(state["best_model_score"])
    run_metrics = ckpt_path.resolve().parent.parent / "metrics.json"
    if run_metrics.is_file():
        metrics |= json.loads(run_metrics.read_text())
    return metrics


def export(cfg: DictConfig) -> dict[str, Any]:
    settle(cfg)
    if not cfg.get("ckpt_path"):
        raise UserError("export needs ckpt_path=<run>/checkpoints/best.ckpt")
    if cfg.format not in FILE_NAMES:
        raise UserError(f"format={cfg.format!r} is not one of {', '.join(FILE_NAMES)}.")
    ckpt_path = Path(cfg.ckpt_path)
    checkpoint = read_checkpoint(ckpt_path)  # read once: the model and its metrics
    model = classifier_from_checkpoint(checkpoint, ckpt_path)
    hparams = model.hparams
    saved = dict(hparams.get("preprocessing") or {})
    if not {"resize", "crop", "mean", "std"} <= saved.keys():
        raise UserError(f"{ckpt_path} records no input size and normalization (an older one).")
    contract = InputContract.from_dict(saved)
    net = model.net.eval().to(memory_format=torch.contiguous_format)
    size = contract.crop
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILE_NAMES[cfg.format]
    example = torch.randn(2, 3, size, size)
    log.info(f"Exporting {hparams.net['name']} as {cfg.format} to {path}")
    if cfg.format == "onnx":
        run = export_onnx(net, example, path, cfg.onnx_opset)
    elif cfg.format == "torchscript":
        run = export_torchscript(net, example, path)
    else:
        run = export_weights(net, path, dict(hparams.net), hparams.num_classes)

    batch = torch.randn(cfg.check_batch, 3, size, size)  # another batch size than the example
    with torch.inference_mode():
        diff = (run(batch).float() - net(batch).float()).abs().max().item()
    log.info(f"Check: max abs logit difference, {cfg.format} vs PyTorch = {diff:.3g}")
    if not diff <= cfg.check_tolerance:
        raise UserError(
            f"The {cfg.format} export does not reproduce the net: max abs logit difference "
            f"{diff:.3g} > check_tolerance={cfg.check_tolerance}. The file is at {path}."
        )
    # every file the export wrote (ONNX puts large weights in a .data file beside the graph),
    # readable by all like any other file the run writes (safetensors writes 0600)
    files = sorted(p for p in out_dir.iterdir() if p.name.startswith(path.name))
    for written in files:
        written.chmod(0o644)
    card = {
        "format": cfg.format,
        "file": path.name,
        "files": (hashes := {p.name: sha256(p) for p in files}),
        "sha256": hashes[path.name],
        "source_checkpoint": str(ckpt_path.resolve()),
        "architecture": {k: v for k, v in dict(hparams.net).items() if k not in PRETRAINED_KEYS},
        "num_classes": hparams.num_classes,
        "classes": model.class_names,
        "input": {
            "shape": ["batch", 3, size, size],
            "layout": "NCHW float32, RGB",
            "preprocess": f"resize short side to {contract.resize}, center-crop {size}, "
            "scale to [0, 1], subtract mean, divide by std",
            **contract.as_dict(),
        },
        "task": hparams.get("task", "multiclass"),
        **model.objective.card(model.class_names),
        "metrics": checkpoint_metrics(checkpoint, ckpt_path),
        "check": {"max_abs_logit_diff": diff, "tolerance": cfg.check_tolerance},
    }
    (out_dir / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    print_metrics_table(card["metrics"], title=f"{path} (+ model_card.json)")
    return card


main = task_main("export", export)


if __name__ == "__main__":
    main()
