"""Inference speed of an exported net: onnxruntime against PyTorch eager, same weights, CPU.

    python benchmarks/onnx_inference.py [--net resnet18] [--size 224] [--batches 1 32]
        [--threads 2] [--repeats 20]

The net is exported the way `python export.py format=onnx` does (imgcls.export.export_onnx),
outputs are checked to agree, then each runtime classifies the same random batch `--repeats`
times after warm-up; the median time per batch is printed, and last, per batch size,
`ratio onnxruntime/pytorch=<x>` in images/s (above 1: onnxruntime is faster).
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from imgcls.export import export_onnx
from imgcls.models.zoo import build_net


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    print(f"{args.net} at {args.size} px, {args.threads} threads, median of {args.repeats}")
    ratios = {}
    for batch in args.batches:
        images = torch.randn(batch, 3, args.size, args.size)
        feed = {"images": images.numpy()}
        with torch.inference_mode():
            diff = (torch.from_numpy(session.run(None, feed)[0]) - net(images)).abs().max()

            def eager(images: torch.Tensor = images) -> object:
                return net(images)

            torch_s = median_seconds(eager, args.repeats)
        ort_s = median_seconds(lambda feed=feed: session.run(None, feed), args.repeats)
        ratios[batch] = torch_s / ort_s
        print(
            f"batch {batch:3d}: pytorch {batch / torch_s:7.1f} img/s, "
            f"onnxruntime {batch / ort_s:7.1f} img/s (max abs logit diff {diff:.2g})"
        )
    for batch, ratio in ratios.items():
        print(f"batch {batch}: ratio onnxruntime/pytorch={ratio:.2f}")


if __name__ == "__main__":
    main()
