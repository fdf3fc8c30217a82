"""Inference speed of an exported net: onnxruntime against PyTorch eager, same weights, CPU.

    python benchmarks/onnx_inference.py [--net resnet18] [--size 224] [--batches 1 32]
        [--threads 2] [--repeats 20]

The net is exported the way `python export.py format=onnx` does (imgcls.export.export_onnx),
outputs are checked to agree, then each runtime classifies the same random batch `--repeats`
times after warm-up, the two in turn and in rotating order (paired.py); images/s is printed as a
median with its spread, and last, per batch size, `ratio onnxruntime/pytorch=<x>`, the median of
the paired ratios (above 1: onnxruntime is faster).
"""

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from imgcls.export import export_onnx
from imgcls.models.zoo import build_net
from paired import paired_repeats, ratio_line, spread


def rate(run: Callable[[], object], batch: int) -> Callable[[], float]:
    """Images/s of one call of `run` on a batch of `batch` images."""

    def timed() -> float:
        start = time.perf_counter()
        run()
        return batch / (time.perf_counter() - start)

    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import onnxruntime

    torch.set_num_threads(args.threads)
    net = build_net(args.net, num_classes=1000).eval()
    example = torch.randn(2, 3, args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(net, example, path, opset=18)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    print(f"{args.net} at {args.size} px, {args.threads} threads, {args.repeats} paired repeats")
    lines = []
    for batch in args.batches:
        images = torch.randn(batch, 3, args.size, args.size)
        feed = {"images": images.numpy()}
        with torch.inference_mode():
            diff = (torch.from_numpy(session.run(None, feed)[0]) - net(images)).abs().max()
            runtimes = {
                "pytorch": rate(lambda images=images: net(images), batch),
                "onnxruntime": rate(lambda feed=feed: session.run(None, feed), batch),
            }
            for _ in range(3):  # warm-up
                for run in runtimes.values():
                    run()
            rates = paired_repeats(runtimes, args.repeats)
        print(
            f"batch {batch:3d}: pytorch {spread(rates['pytorch'], 1)} img/s, onnxruntime "
            f"{spread(rates['onnxruntime'], 1)} img/s (max abs logit diff {diff:.2g})"
        )
        ratio = ratio_line("onnxruntime/pytorch", rates["onnxruntime"], rates["pytorch"], 2)
        lines.append(f"batch {batch}: {ratio}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
