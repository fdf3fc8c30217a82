"""Inference speed of an exported net: onnxruntime against PyTorch eager, and int8 / fp16 ONNX
files against the float32 one, same weights, CPU.

    python benchmarks/onnx_inference.py [--net resnet18] [--size 224] [--batches 1 32]
        [--threads 2] [--repeats 20]
    python benchmarks/onnx_inference.py --ckpt logs/train/runs/<run>/checkpoints/best.ckpt

Without `--ckpt` a randomly initialized `--net` is exported the way `python export.py
format=onnx` does (imgcls.export.export_onnx), outputs are checked to agree, then each runtime
classifies the same random batch `--repeats` times after warm-up, the two in turn and in rotating
order (paired.py); images/s is printed as a median with its spread, and last, per batch size,
`ratio onnxruntime/pytorch=<x>`, the median of the paired ratios (above 1: onnxruntime is
faster).

With `--ckpt` (a trained run, its run dir and data in place) the run's net is exported three
times as `export.py format=onnx quantize=...` writes it: float32, int8 (calibrated on the run's
training images) and fp16, and once as PyTorch's own int8 (`format=torchscript quantize=int8`,
FX post-training quantization on the same images). Each classifies the run's whole test split
(its accuracy, beside PyTorch's float32) and a batch of its test images, timed as above: `ratio
int8/fp32` and `ratio fp16/fp32` (ONNX Runtime), `ratio torch_int8/pytorch` (PyTorch's int8
against its float32 eager net) and `ratio int8/torch_int8` per batch size.
"""

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# PyTorch's OpenMP threads, like ONNX Runtime's (allow_spinning below), sleep when idle instead
# of busy-waiting: spinning threads of one runtime take the cores from the other, timed next
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch

from imgcls.export import (
    PRECISIONS,
    export_onnx,
    quantize_onnx,
    quantize_torch,
    run_data,
)
from imgcls.models.exported import OnnxRunner
from imgcls.models.loading import load_classifier
from imgcls.models.zoo import build_net
from imgcls.run.resolvers import register_resolvers
from paired import paired_repeats, ratio_line, spread

CALIBRATION_IMAGES = 256  # export.py's default


def rate(run: Callable[[], object], batch: int) -> Callable[[], float]:
    """Images/s of one call of `run` on a batch of `batch` images."""

    def timed() -> float:
        start = time.perf_counter()
        run()
        return batch / (time.perf_counter() - start)

    return timed


def timed_runs(
    runners: dict[str, Callable[[torch.Tensor], object]], images: torch.Tensor, repeats: int
) -> dict[str, list[float]]:
    """Images/s of each runner on `images`, paired and rotated after 3 warm-up calls each."""
    timed = {name: rate(lambda run=run: run(images), len(images)) for name, run in runners.items()}
    with torch.inference_mode():
        for _ in range(3):
            for run in timed.values():
                run()
        return paired_repeats(timed, repeats)


def random_net(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    net = build_net(args.net, num_classes=1000).eval()
    example = torch.randn(2, 3, args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(net, example, path, opset=18)
        onnx = OnnxRunner(path)  # on the threads torch was given
    print(f"{args.net} at {args.size} px, {args.threads} threads, {args.repeats} paired repeats")
    lines = []
    for batch in args.batches:
        images = torch.randn(batch, 3, args.size, args.size)
        with torch.inference_mode():
            diff = (onnx(images) - net(images)).abs().max()
        rates = timed_runs({"pytorch": net, "onnxruntime": onnx}, images, args.repeats)
        print(
            f"batch {batch:3d}: pytorch {spread(rates['pytorch'], 1)} img/s, onnxruntime "
            f"{spread(rates['onnxruntime'], 1)} img/s (max abs logit diff {diff:.2g})"
        )
        ratio = ratio_line("onnxruntime/pytorch", rates["onnxruntime"], rates["pytorch"], 2)
        lines.append(f"batch {batch}: {ratio}")
    print("\n".join(lines))


def accuracy(run: Callable[[torch.Tensor], torch.Tensor], datamodule: object) -> float:
    """Top-1 accuracy on the run's whole test split, preprocessed as the run evaluates it."""
    right = seen = 0
    with torch.inference_mode():
        for images, labels in datamodule.eval_batches("test", torch.device("cpu")):
            right += int((run(images.float()).argmax(1) == labels).sum())
            seen += len(labels)
    return right / seen


def trained_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    register_resolvers()
    ckpt = Path(args.ckpt)
    model = load_classifier(ckpt)
    net, size = model.net.eval(), model.hparams.preprocessing["crop"]
    with tempfile.TemporaryDirectory() as tmp:
        datamodule = run_data(ckpt, Path(tmp))
        if datamodule is None:
            raise SystemExit(f"The run of {ckpt} (its .hydra/config.yaml and data) is not here.")
        cpu = torch.device("cpu")
        calibration = datamodule.first_images("train", CALIBRATION_IMAGES, cpu).float()
        runners: dict[str, Callable] = {}
        for precision in PRECISIONS:
            path = Path(tmp) / precision / "model.onnx"
            path.parent.mkdir()
            export_onnx(net, torch.randn(2, 3, size, size), path, opset=18)
            if precision != "fp32":
                quantize_onnx(path, precision, calibration if precision == "int8" else None)
            runners[precision] = OnnxRunner(path)  # on the threads torch was given
            print(f"{precision}: {sum(p.stat().st_size for p in path.parent.iterdir()):,} bytes")
        example = torch.randn(2, 3, size, size)
        runners["pytorch"] = net
        runners["torch_int8"] = torch.jit.trace(quantize_torch(net, example, calibration), example)
        accuracies = {name: accuracy(run, datamodule) for name, run in runners.items()}
        print(f"{model.hparams.net['name']} at {size} px, {args.threads} threads, ckpt {ckpt}")
        print("test accuracy: " + ", ".join(f"{k} {v:.2%}" for k, v in accuracies.items()))
        lines = []
        for batch in args.batches:
            images = datamodule.first_images("test", batch, cpu).float()
            rates = timed_runs(runners, images, args.repeats)
            print(
                f"batch {batch:3d}: "
                + ", ".join(f"{k} {spread(v, 1)} img/s" for k, v in rates.items())
            )
            pairs = [("int8", "fp32"), ("fp16", "fp32"), ("torch_int8", "pytorch")]
            for faster, base in [*pairs, ("int8", "torch_int8")]:
                ratio = ratio_line(f"{faster}/{base}", rates[faster], rates[base], 2)
                lines.append(f"batch {batch}: {ratio}")
        print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--ckpt", help="a trained run's checkpoint: fp32, int8 and fp16 files")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    trained_run(args) if args.ckpt else random_net(args)


if __name__ == "__main__":
    main()
