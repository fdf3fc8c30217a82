"""Input pipeline throughput on real photos: ours against seed 000's and torchvision's.

    python benchmarks/input_pipeline.py [--images DIR] [--samples 600] [--repeats 3]

DIR is an ImageNet-style folder of real photos (default: data/imagenet-sample-100, extracted
from ../shared/data/imagenet-sample-100.tar); its images are repeated to `--samples` per run.
Every pipeline runs in a DataLoader with one worker process, batch 64, and torch threads set to
1 everywhere, on the same files in the same order; the figure is the median of `--repeats`
runs, in images per second. "end to end" adds the device-side part (for seed_classic: rotation +
colour jitter, then normalization) run on the CPU in the main process.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as v1
from torchvision.io import decode_jpeg

from imgcls import REPO_ROOT
from imgcls.data.datamodule import IMAGENET_MEAN, IMAGENET_STD
from imgcls.data.decode import read_rgb
from imgcls.data.digits import DigitsDataModule
from imgcls.data.files import ImageFileDataset, list_images
from imgcls.data.transforms import build_pipeline

BATCH = 64


def seed000_transform() -> v1.Compose:
    """Seed 000's train_transforms, exactly as written there."""
    return v1.Compose(
        [
            v1.RandomResizedCrop(224),
            v1.RandomHorizontalFlip(),
            v1.RandomRotation(10),
            v1.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2),
            v1.ToTensor(),
            v1.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def torchvision_reference_transform() -> v1.Compose:
    """torchvision's references/classification train preset without auto-augment (PIL)."""
    return v1.Compose(
        [
            v1.RandomResizedCrop(224),
            v1.RandomHorizontalFlip(),
            v1.PILToTensor(),
            v1.ConvertImageDtype(torch.float),
            v1.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


class PILDataset(Dataset):
    """ImageFolder's way: PIL open + convert("RGB") per file, then the transform."""

    def __init__(self, paths: list[Path], transform: Callable) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with open(self.paths[i], "rb") as f:
            image = Image.open(f).convert("RGB")
        return self.transform(image), 0


class DecodeOnly(Dataset):
    """The ceiling: libjpeg-turbo decode through torchvision.io, nothing else."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> int:
        data = torch.frombuffer(bytearray(self.paths[i].read_bytes()), dtype=torch.uint8)
        return decode_jpeg(data, device="cpu").numel()


def set_one_thread(_: int = 0) -> None:
    torch.set_num_threads(1)


def images_per_second(
    dataset: Dataset, on_batch: Callable | None = None, repeats: int = 3
) -> float:
    rates = []
    for _ in range(repeats):
        loader = DataLoader(
            dataset,
            batch_size=BATCH,
            num_workers=1,
            worker_init_fn=set_one_thread,
            collate_fn=None if not isinstance(dataset, DecodeOnly) else len,
        )
        start = time.perf_counter()
        for batch in loader:
            if on_batch is not None:
                on_batch(batch)
        rates.append(len(dataset) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=REPO_ROOT / "data" / "imagenet-sample-100")
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    photos = [p for p in list_images(args.images) if p.suffix.upper() in (".JPEG", ".JPG")]
    if not photos:
        sys.exit(
            f"No JPEG photos under {args.images}: "
            "extract ../shared/data/imagenet-sample-100.tar there."
        )
    paths = [photos[i % len(photos)] for i in range(args.samples)]
    samples = [(str(p), 0) for p in paths]
    set_one_thread()
    sizes = [read_rgb(p).shape[1:] for p in photos]
    print(
        f"{len(photos)} photos (median {statistics.median(h for h, _ in sizes)}x"
        f"{statistics.median(w for _, w in sizes)} px) repeated to {len(paths)} per run; "
        f"1 worker, 1 thread, batch {BATCH}, median of {args.repeats} runs"
    )

    classic_pipeline = build_pipeline("seed_classic", in_memory=False)
    standard_pipeline = build_pipeline("standard", in_memory=False)
    normalizer = DigitsDataModule(mean=IMAGENET_MEAN, std=IMAGENET_STD)  # any source: the base's

    def classic_device_side(batch: tuple) -> None:
        normalizer.normalize(classic_pipeline.train_device(batch[0].float()))

    ours = lambda p: ImageFileDataset(samples, p.train_worker, min_side=p.train_crop)  # noqa: E731
    figures = {
        "seed000": images_per_second(PILDataset(paths, seed000_transform()), repeats=args.repeats),
        "seed_classic worker": images_per_second(ours(classic_pipeline), repeats=args.repeats),
        "seed_classic end_to_end": images_per_second(
            ours(classic_pipeline), classic_device_side, repeats=args.repeats
        ),
        "torchvision_reference": images_per_second(
            PILDataset(paths, torchvision_reference_transform()), repeats=args.repeats
        ),
        "standard worker": images_per_second(ours(standard_pipeline), repeats=args.repeats),
        "decode only (ceiling)": images_per_second(DecodeOnly(paths), repeats=args.repeats),
    }
    for name, rate in figures.items():
        print(f"{name:>26}: {rate:7.1f} img/s")
    ceiling = figures["decode only (ceiling)"]
    classic, standard = figures["seed_classic worker"], figures["standard worker"]
    shares = (
        f"seed_classic worker {classic / ceiling:.2f}, standard worker {standard / ceiling:.2f}"
    )
    print(f"ceiling fraction: {shares}")
    print(f"ratio standard/torchvision_reference={standard / figures['torchvision_reference']:.2f}")
    print(f"ratio seed_classic worker/seed={classic / figures['seed000']:.2f}")
    end_to_end = figures["seed_classic end_to_end"]
    print(f"ratio seed_classic end_to_end/seed={end_to_end / figures['seed000']:.2f}")


if __name__ == "__main__":
    main()
