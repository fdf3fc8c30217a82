"""Ship a trained net: `python export.py ckpt_path=... format=onnx|torchscript|state_dict|
safetensors [quantize=int8|fp16]` or `imgcls-export`.

The net alone is exported (float NCHW RGB input, normalized with the card's mean / std; logits
out), with a batch axis of any size. Every export is checked by loading the written file back,
with the runtime its users will use, and comparing its logits with PyTorch's on images of the
run's test split, preprocessed as the run evaluated them (the run's data config, read from its
run dir; random images where the data is gone, and the card says which). `quantize=int8` (ONNX
Runtime's static quantization, per-channel weights, activations calibrated on the run's training
images) and `quantize=fp16` make a smaller ONNX file; `format=torchscript quantize=int8` is
PyTorch's own int8 (torchvision's references' path, run on the CPU's quantized kernels). A
quantized file's check is that the top class agrees with PyTorch's. `model_card.json` beside it
says what the net expects, its precision and how well it did.
"""

import copy
import hashlib
import inspect
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from imgcls.input_contract import InputContract
from imgcls.models.exported import OnnxRunner
from imgcls.models.loading import classifier_from_checkpoint, read_checkpoint
from imgcls.models.zoo import PRETRAINED_KEYS, build_net
from imgcls.run.compose import instantiate
from imgcls.run.settle import settle
from imgcls.run.task import task_main
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.rich_utils import print_metrics_table

log = get_logger(__name__)
PRECISIONS = ("fp32", "int8", "fp16")
#: the precisions each format can be written in
QUANTIZABLE = {"onnx": PRECISIONS, "torchscript": ("fp32", "int8")}
CALIBRATION_BATCH = 32  # images a calibration pass feeds at once
CPU = torch.device("cpu")  # where an export runs and checks its file
FILE_NAMES = {
    "onnx": "model.onnx",
    "torchscript": "model.torchscript.pt",
    "state_dict": "model.pth",
    "safetensors": "model.safetensors",
}


def export_onnx(net: nn.Module, example: Tensor, path: Path, opset: int) -> None:
    """The net as an ONNX file (torch.export's graph), its batch size free; run it with
    models/exported.OnnxRunner once written (and quantized)."""
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


def quantize_onnx(path: Path, precision: str, calibration: Tensor | None) -> None:
    """The ONNX file at `path` in a smaller precision, in place. int8: ONNX Runtime's static
    quantization (QDQ, int8 weights per output channel, int8 activations whose ranges come from
    `calibration`, un-augmented training images), the form its CPU and TensorRT providers run
    fastest; fp16: every float weight and activation halved, the input and output kept float32
    so a caller feeds the same arrays."""
    import onnx

    full = path.with_name(f"{path.stem}.fp32{path.suffix}")
    model = onnx.load(str(path))  # with the weights of an external .data file beside it
    onnx.save(model, str(full))
    for written in path.parent.glob(f"{path.name}*"):
        written.unlink()
    try:
        if precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            halved = convert_float_to_float16(onnx.load(str(full)), keep_io_types=True)
            onnx.save(halved, str(path))
            return
        from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        class Images(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter(calibration.split(CALIBRATION_BATCH))

            def get_next(self) -> dict | None:
                batch = next(self.batches, None)
                return None if batch is None else {"images": batch.numpy()}

        prepared = path.with_name(f"{path.stem}.prepared{path.suffix}")
        quant_pre_process(str(full), str(prepared))
        quantize_static(
            str(prepared),
            str(path),
            Images(),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
        prepared.unlink()
    finally:
        full.unlink()


def quantize_torch(net: nn.Module, example: Tensor, calibration: Tensor) -> nn.Module:
    """PyTorch's own int8 net, the path of torchvision's quantization references (post-training
    static quantization: int8 weights per output channel, int8 activations whose ranges come
    from `calibration`), in FX graph mode so any net torch.fx can trace takes it, not only
    torchvision's quantizable copies. It runs on the CPU's quantized kernels (x86's, or
    qnnpack's on ARM), the engine the file is loaded with."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engines = torch.backends.quantized.supported_engines
    engine = "x86" if "x86" in engines else "qnnpack"
    torch.backends.quantized.engine = engine
    try:
        with warnings.catch_warnings():  # torch.ao.quantization is deprecated for torchao
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
            # torch's own notes on its quantized tensors' future (pytorch#184982), not the user's
            warnings.filterwarnings("ignore", r".*(reduce_range|quantized tensor creation)")
            prepared = prepare_fx(
                copy.deepcopy(net), get_default_qconfig_mapping(engine), (example,)
            )
            with torch.no_grad():  # observers record each activation's range
                for batch in calibration.split(CALIBRATION_BATCH):
                    prepared(batch)
            return convert_fx(prepared)
    except Exception as err:  # torch.fx's tracing and the quantizer raise many kinds
        raise UserError(
            f"PyTorch's int8 cannot quantize this net ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no message'}); use format=onnx "
            "quantize=int8 (ONNX Runtime's, which takes any exported net)."
        ) from None


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


def check_export(
    run: Callable, net: nn.Module, datamodule: Any | None, cfg: DictConfig, size: int
) -> dict[str, Any]:
    """The exported file's logits against PyTorch's on the first `check_batch` images of the
    run's test split (random ones where the data is gone). A float32 file must match within
    `check_tolerance`; a quantized one must name the same top class for `check_agreement` of
    the images, since int8 or fp16 logits are meant to differ a little."""
    if datamodule is not None:
        images = datamodule.first_images("test", cfg.check_batch, CPU).float()
        on = "test images"
    else:
        log.warning("The run's data is not here: the export is checked on random images.")
        images, on = torch.randn(cfg.check_batch, 3, size, size), "random images"
    with torch.inference_mode():
        exported, expected = run(images).float(), net(images).float()
    diff = (exported - expected).abs().max().item()
    agreement = (exported.argmax(1) == expected.argmax(1)).float().mean().item()
    quantized = bool(cfg.quantize)
    return {
        "on": on,
        "images": len(images),
        "max_abs_logit_diff": diff,
        "top1_agreement": agreement,
        "required": (
            {"top1_agreement": cfg.check_agreement}
            if quantized
            else {"max_abs_logit_diff": cfg.check_tolerance}
        ),
        "passed": agreement >= cfg.check_agreement if quantized else diff <= cfg.check_tolerance,
    }


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


def run_data(ckpt_path: Path, out_dir: Path) -> Any | None:
    """The datamodule of the run that wrote the checkpoint (`<run>/checkpoints/x.ckpt`: its
    `.hydra/config.yaml`), writing what it writes (split.csv) under `out_dir`; None where the
    run's config or its data is gone."""
    saved = ckpt_path.resolve().parent.parent / ".hydra" / "config.yaml"
    if not saved.is_file():
        return None
    data = OmegaConf.load(saved).data
    if "artifacts_dir" in data:
        data.artifacts_dir = str(out_dir)
    if "num_workers" in data:  # a batch or a few: read here, no worker processes started
        data.num_workers = 0
    try:
        datamodule = instantiate(data)
        datamodule.setup()
    except (UserError, OSError) as err:
        log.warning(f"The run's data ({data._target_}) cannot be read here: {err}")
        return None
    return datamodule


def export(cfg: DictConfig) -> dict[str, Any]:
    settle(cfg)
    if not cfg.get("ckpt_path"):
        raise UserError("export needs ckpt_path=<run>/checkpoints/best.ckpt")
    if cfg.format not in FILE_NAMES:
        raise UserError(f"format={cfg.format!r} is not one of {', '.join(FILE_NAMES)}.")
    precision = cfg.quantize or "fp32"
    if precision not in PRECISIONS or precision not in QUANTIZABLE.get(cfg.format, ("fp32",)):
        raise UserError(
            f"quantize={cfg.quantize} (format={cfg.format}): quantize takes int8 (format=onnx "
            "or torchscript) or fp16 (format=onnx); null keeps float32."
        )
    ckpt_path = Path(cfg.ckpt_path)
    checkpoint = read_checkpoint(ckpt_path)  # read once: the model and its metrics
    model = classifier_from_checkpoint(checkpoint, ckpt_path)
    hparams = model.hparams
    saved = dict(hparams.get("preprocessing") or {})
    if not {"resize", "crop", "mean", "std"} <= saved.keys():
        raise UserError(f"{ckpt_path} records no input size and normalization (an older one).")
    contract = InputContract.from_dict(saved)
    # plain weights: loading merges a LoRA run's adapters
    net = model.net.eval().to(memory_format=torch.contiguous_format)
    size = contract.crop
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILE_NAMES[cfg.format]
    datamodule = run_data(ckpt_path, out_dir)
    if datamodule is None and precision == "int8":
        raise UserError(
            f"quantize=int8 calibrates on the run's training images, and the run of {ckpt_path} "
            "(its .hydra/config.yaml and data) cannot be read here: export from the run dir, "
            "with its data in place, or use quantize=fp16."
        )
    example = torch.randn(2, 3, size, size)
    calibration = None  # int8: un-augmented training images give the activations' ranges
    if precision == "int8":
        calibration = datamodule.first_images("train", cfg.calibration_images, CPU).float()
    engine = None  # PyTorch's int8: the quantized kernels' engine the card names
    log.info(f"Exporting {hparams.net['name']} as {cfg.format} ({precision}) to {path}")
    if cfg.format == "onnx":
        export_onnx(net, example, path, cfg.onnx_opset)
        if cfg.quantize:
            quantize_onnx(path, precision, calibration)
        run = OnnxRunner(path)
    elif cfg.format == "torchscript":
        traced = net
        if calibration is not None:
            traced = quantize_torch(net, example, calibration)
            engine = torch.backends.quantized.engine  # the kernels it was quantized for
        run = export_torchscript(traced, example, path)
    else:
        run = export_weights(net, path, dict(hparams.net), hparams.num_classes)

    check = check_export(run, net, datamodule, cfg, size)
    log.info(
        f"Check on {check['images']} {check['on']}: {cfg.format} ({precision}) vs PyTorch, max abs "
        f"logit difference {check['max_abs_logit_diff']:.3g}, top-1 agreement "
        f"{check['top1_agreement']:.1%}"
    )
    if not check["passed"]:
        held_to = (
            f"check_tolerance={cfg.check_tolerance}"
            if precision == "fp32"
            else f"check_agreement={cfg.check_agreement}"
        )
        raise UserError(
            f"The {cfg.format} ({precision}) export does not reproduce the net: max abs logit "
            f"difference {check['max_abs_logit_diff']:.3g}, top-1 agreement "
            f"{check['top1_agreement']:.1%}, held to {held_to}. The file is at {path}."
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
        "precision": precision,
        **({"quantized_engine": engine} if engine else {}),
        "metrics": checkpoint_metrics(checkpoint, ckpt_path),
        "check": check,
    }
    (out_dir / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    print_metrics_table(card["metrics"], title=f"{path} (+ model_card.json)")
    return card


main = task_main("export", export)


if __name__ == "__main__":
    main()
