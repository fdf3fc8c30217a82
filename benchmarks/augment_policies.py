"""What an augmentation policy (data.augment.policy) and RandomErasing cost per batch on the device,
against torchvision's own policy applied image by image (what a loader worker does per image).

    python benchmarks/augment_policies.py                       # CIFAR-sized: 128 x 32 px
    python benchmarks/augment_policies.py --size 224 --batch 64 --device cuda

Prints, per policy, the milliseconds a batch takes both ways (median of paired, rotated repeats)
and the ratio of their speeds. On a CPU both run on one thread, as one loader worker would; the
device version is what data held in memory (CIFAR, digits) or decoded on the device pays.
"""

import argparse
import time

import torch

from imgcls.data.augmentation.batched import RandomErasingBatch
from imgcls.data.augmentation.policies import POLICIES, DevicePolicy
from paired import paired_repeats, ratio_line, spread


def timed(step, device: torch.device, batches: int) -> float:
    """Batches per second of `step()`."""
    step()  # warm-up (tables to the device, kernels chosen)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(batches):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    shape = (args.batch, 3, args.size, args.size)
    images = torch.randint(0, 256, shape, device=device).float()
    as_uint8 = images.to(torch.uint8)
    print(f"batch {args.batch} x {args.size} px on {device}; ms per batch, median (min-max)")
    for name in POLICIES:
        batched, reference = DevicePolicy(name), POLICIES[name](None, None)
        rates = paired_repeats(
            {
                "batched": lambda b=batched: timed(lambda: b(images), device, args.batches),
                "per image": lambda r=reference: timed(
                    lambda: [r(image) for image in as_uint8], device, args.batches
                ),
            },
            args.repeats,
        )
        ms = {k: [1000 / v for v in values] for k, values in rates.items()}
        print(
            f"{name:22s} batched {spread(ms['batched'], 1)} ms, torchvision per image "
            f"{spread(ms['per image'], 1)} ms; "
            + ratio_line("batched/per_image", rates["batched"], rates["per image"], 2)
        )
    erasing = RandomErasingBatch(0.25, "pixel")
    rate = paired_repeats({"erasing": lambda: timed(lambda: erasing(images), device, 5)}, 3)
    print(f"{'random_erasing 0.25':22s} {spread([1000 / v for v in rate['erasing']], 2)} ms")


if __name__ == "__main__":
    main()
