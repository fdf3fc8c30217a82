"""A file `export.py` wrote, scored as its users will run it: `eval.py ckpt_path=<export
dir>/model.onnx` (or `model.torchscript.pt`, `model.pth`, `model.safetensors`) runs the file
itself (ONNX Runtime, TorchScript, or the state dict in its net) inside the model its
`model_card.json` describes (classes, task, temperature or thresholds, input contract), so the
evaluation report of an int8 ONNX file is written as a checkpoint's is, on the same test split
with the card's preprocessing."""

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from imgcls.models.classifier import ImageClassifier
from imgcls.models.zoo import PRETRAINED_KEYS
from imgcls.utils.errors import UserError

#: the file name export.py gives each format, by suffix
FORMATS = {
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".pth": "state_dict",
    ".safetensors": "safetensors",
}
CARD = "model_card.json"


def names_an_export(path: str | Path) -> bool:
    """Whether `path` names a file of export.py's rather than a checkpoint."""
    return Path(str(path)).suffix in FORMATS


def read_card(path: str | Path) -> dict[str, Any]:
    """The model card export.py wrote beside the file."""
    card_path = Path(path).parent / CARD
    if not Path(path).is_file() or not card_path.is_file():
        raise UserError(
            f"ckpt_path={path}: an exported model is scored with the {CARD} export.py wrote "
            "beside it; pass the file in its export dir, or a checkpoint (.ckpt)."
        )
    return json.loads(card_path.read_text())


def export_hyperparameters(path: str | Path) -> dict[str, Any]:
    """What a checkpoint says of its model, said from the card of an exported file."""
    card = read_card(path)
    hparams = {
        "net": {**card["architecture"], **PRETRAINED_KEYS},
        "num_classes": card["num_classes"],
        "optimizer": {},
        "task": card.get("task", "multiclass"),
        "class_names": card["classes"],
        "preprocessing": {k: card["input"][k] for k in ("resize", "crop", "mean", "std")},
    }
    if "temperature" in card:
        hparams["temperature"] = card["temperature"]
    return hparams


class ExportedNet(nn.Module):
    """The exported file as a net: logits of a float NCHW batch, on the batch's device. An ONNX
    file runs in ONNX Runtime on the CPU (a copy each way, one wait per batch: evaluation only);
    a TorchScript file is the module it holds, an int8 one on the CPU, whose quantized kernels
    it calls (kept out of the module tree, so moving the model to a GPU leaves it there)."""

    def __init__(
        self, path: Path, kind: str, precision: str = "fp32", engine: str | None = None
    ) -> None:
        """`engine`: PyTorch's int8 file's quantized kernels (x86, qnnpack), as it was made."""
        super().__init__()
        self.module: nn.Module | None = None  # a TorchScript file run where the batch is
        # a file run on the CPU: PyTorch's int8 (a plain attribute, out of the module tree, so
        # moving the model to a GPU leaves it there), or ONNX Runtime's (made at the first
        # batch: by then Lightning has given each DDP rank its share of the cores)
        self.on_cpu: Any = None
        self.path = path
        if kind == "torchscript":
            module = torch.jit.load(str(path), map_location="cpu")
            if precision == "int8":
                use_engine(engine or "x86")
                self.on_cpu = module.forward
            else:
                self.module = module
            return
        import onnxruntime  # noqa: F401  (missing: said now, not at the first batch)

    def forward(self, images: Tensor) -> Tensor:
        if self.module is not None:
            return self.module(images)
        if self.on_cpu is None:
            self.on_cpu = OnnxRunner(self.path)
        return self.on_cpu(images.detach().float().cpu()).to(images.device)


class OnnxRunner:
    """Logits of a CPU batch from an ONNX file, by ONNX Runtime's CPU session on torch's share
    of the cores (all the cores in every DDP rank would oversubscribe them), with no thread
    busy-waiting between batches (it would take the cores from data loading, or from the
    runtime a benchmark times next)."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, images: Tensor) -> Tensor:
        return torch.from_numpy(self.session.run(None, {"images": images.numpy()})[0])


def use_engine(engine: str) -> None:
    """Run PyTorch's quantized ops on `engine`'s kernels, those an int8 file was made for (x86's
    reduce their activations' range, qnnpack's do not), or one line where this CPU has none."""
    if engine not in torch.backends.quantized.supported_engines:
        raise UserError(
            f"This int8 file was quantized for the {engine} engine, which this machine's PyTorch "
            f"lacks ({', '.join(torch.backends.quantized.supported_engines)}): export it here, "
            "or export format=onnx quantize=int8."
        )
    torch.backends.quantized.engine = engine


def classifier_from_export(path: str | Path) -> ImageClassifier:
    """The model of an exported file: the card's classifier with the file as its net (ONNX,
    TorchScript) or with the file's weights in its net (state dict, safetensors)."""
    path = Path(path)
    card = read_card(path)
    model = ImageClassifier(**export_hyperparameters(path))
    kind = FORMATS[path.suffix]
    if kind in ("onnx", "torchscript"):
        model.net = ExportedNet(
            path, kind, card.get("precision", "fp32"), card.get("quantized_engine")
        )
    else:
        if kind == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.net.load_state_dict(state)
    if "thresholds" in card:  # a multi-label model's, per class
        model.objective.use_thresholds(card["thresholds"], card["classes"])
    return model.eval()
