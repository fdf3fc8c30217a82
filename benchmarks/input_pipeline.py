"""Feeding a GPU photos: our train loader against torchvision's ImageFolder + PIL, same workers.

    python benchmarks/input_pipeline.py --workers 1 --decode cpu
    python benchmarks/input_pipeline.py --workers 1 --decode device --prepared
    python benchmarks/input_pipeline.py --workers 1 --format shards
    python benchmarks/input_pipeline.py --workers 15 --decode cpu --decode device \\
        --samples 6400 --batch 256 --train --train-compiled       # on a GPU

--images is a folder of real photos (default data/imagenet-sample-100, from
../shared/data/imagenet-sample-100.tar); they are linked `--samples` times over into an ImageNet
tree (train/ and val/ of their classes) in a temporary folder.

Loader only: images/s of a whole epoch of training batches (batch `--batch`, RandomResizedCrop
224 + flip), arriving on the device as the model would get them (`cuda` when there is one):
- torchvision: ImageFolder + PIL RandomResizedCrop + flip + ToTensor, in `--workers` workers;
- imgcls: data=imagenet's train loader with `data.decode=cpu` (the workers decode and crop),
  `device` (the workers read the files; the device decodes and crops each batch at once: on a
  CPU that is this process, one more core at work) or `auto`; `--decode` again for each.
`--prepared` also runs ours on an imgcls-prepare copy (shorter side 320), showing what decoding
fewer pixels gains. `--format shards` runs ours on the same photos written as LitData shards
(`imgcls-prepare --format shards --as-is`, data=shards) against the same photos as files, same
workers; and times listing + opening a dataset of `--open-files` files (hard links of one photo,
default 100,000) against its shards: the data module's set-up and its first training batch.
`--train` runs the headline experiment (resnet50_imagenet, bf16,
channels_last) on the same photos for `--epochs` epochs, with `--train-decode` (default auto),
and prints its images/s and the share of time the loop waited for data (from the run's perf/
metrics); `--train-compiled` does it again with `model.compile=true`. Loader repeats are paired
and rotated (paired.py): a ratio is the median of per-repeat ratios, printed with its spread.
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as v1

from imgcls import REPO_ROOT
from imgcls.data.datamodule import ImageDataModule
from imgcls.data.decoding.device import DECODE_PLACES, choose_decode
from imgcls.data.decoding.images import parse_header
from imgcls.data.sources.files import list_images
from imgcls.data.sources.imagenet import ImageNetDataModule
from imgcls.data.sources.shards import ShardsDataModule, write_shards
from imgcls.prepare import prepare
from imgcls.run.compose import compose_config
from imgcls.train import train
from imgcls.utils.machine import available_cpus
from paired import paired_repeats, ratio_line, spread


def linked_imagenet(photos: list[Path], samples: int, root: Path) -> Path:
    """root/train/<class>/<i>.JPEG and root/val/<class>/<i>.JPEG, links to the photos."""
    for split, count in (("train", samples), ("val", max(len(photos), samples // 10))):
        for i in range(count):
            photo = photos[i % len(photos)]
            folder = root / split / photo.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:06d}.JPEG").symlink_to(photo)
    return root


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torchvision_rate(root: Path, args: argparse.Namespace, device: torch.device) -> float:
    transform = v1.Compose([v1.RandomResizedCrop(224), v1.RandomHorizontalFlip(), v1.ToTensor()])
    dataset = datasets.ImageFolder(str(root / "train"), transform=transform)
    loader = DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    return epoch_rate(loader, device, lambda batch: batch[0].to(device, non_blocking=True))


def on_device(dm: ImageDataModule, device: torch.device) -> ImageDataModule:
    """`dm` set up as a trainer on `device` would see it (one process)."""

    class Trainer:  # the loader's view of the trainer: the device it feeds
        world_size, global_rank, training = 1, 0, True

        class strategy:  # noqa: N801
            root_device = device

    dm.trainer = Trainer()
    dm.setup()
    return dm


def imgcls_rate(
    root: Path, args: argparse.Namespace, device: torch.device, decode: str, shards: bool = False
) -> float:
    loader_args = {
        "batch_size": args.batch,
        "num_workers": args.workers,
        "augment": {"preset": "standard"},
    }
    if shards:
        dm = ShardsDataModule(root=str(root), decode=decode, **loader_args)
    else:
        dm = ImageNetDataModule(root=str(root), decode=decode, artifacts_dir=None, **loader_args)
    dm = on_device(dm, device)
    loader = dm.train_dataloader()

    def to_model(batch: tuple) -> torch.Tensor:
        return dm.on_after_batch_transfer(dm.transfer_batch_to_device(batch, device, 0), 0)[0]

    return epoch_rate(loader, device, to_model)


def write_as_shards(root: Path, dst: Path) -> Path:
    """The ImageNet tree at root as shards at dst, each file's bytes as they are."""
    source = ImageNetDataModule(root=str(root), artifacts_dir=str(dst))
    samples, classes = source.split_samples(), source.class_names
    write_shards(samples, classes, False, root, dst, available_cpus(), keep_bytes=True)
    return dst


def open_seconds(root: Path, device: torch.device, shards: bool) -> float:
    """Seconds from nothing to the first training batch: listing (files) or reading the index
    (shards), building the splits, starting the loader."""
    start = time.perf_counter()
    if shards:
        dm = ShardsDataModule(
            root=str(root), batch_size=64, num_workers=0, augment={"preset": "standard"}
        )
    else:
        dm = ImageNetDataModule(
            root=str(root),
            batch_size=64,
            num_workers=0,
            augment={"preset": "standard"},
            artifacts_dir=None,
        )
    next(iter(on_device(dm, device).train_dataloader()))
    return time.perf_counter() - start


def many_files(photo: Path, count: int, root: Path) -> Path:
    """root/train/<100 classes>/<i>.JPEG (and a val/ of 1,000): hard links to one photo."""
    for split, n in (("train", count), ("val", 1000)):
        for c in range(100):
            (root / split / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            if i % 50_000 == 0:  # a file system allows some 65,000 links to one file
                source = root / f"{split}_{i}.jpg"
                shutil.copyfile(photo, source)
            os.link(source, root / split / f"n{i % 100:08d}" / f"{i:07d}.JPEG")
    return root


def opening(photo: Path, args: argparse.Namespace, device: torch.device, tmp: Path) -> None:
    files = many_files(photo, args.open_files, tmp / "many")
    shards = write_as_shards(files, tmp / "many_shards")
    times = paired_repeats(
        {
            "files": lambda: 1 / open_seconds(files, device, shards=False),
            "shards": lambda: 1 / open_seconds(shards, device, shards=True),
        },
        args.repeats,
    )
    for name, rates in times.items():
        seconds = [1 / r for r in rates]
        print(f"list + open {args.open_files:,} images as {name}: {spread(seconds, 2)} s")
    print("  " + ratio_line("shards/files (speed)", times["shards"], times["files"], digits=1))


def epoch_rate(loader: DataLoader, device: torch.device, to_model) -> float:
    """Images/s over an epoch, after one warm-up epoch (worker start-up)."""
    rates = []
    for _ in range(2):
        synchronize(device)
        start, images = time.perf_counter(), 0
        for batch in loader:
            images += len(to_model(batch))
        synchronize(device)
        rates.append(images / (time.perf_counter() - start))
    return rates[-1]


def train_rates(root: Path, args: argparse.Namespace, compiled: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            "experiment=resnet50_imagenet",
            f"data.root={root}",
            f"data.batch_size={args.batch}",
            f"data.num_workers={args.workers}",
            f"data.decode={args.train_decode}",
            f"trainer.max_epochs={args.epochs}",
            f"model.compile={compiled}",
            "+trainer.limit_val_batches=2",
            "+trainer.num_sanity_val_steps=0",
            "test=false",
            "extras.print_config=false",
            "callbacks.rich_progress_bar=null",
            f"paths.log_dir={out}",
        ]
        metrics, _ = train(compose_config("train", overrides, output_dir=out))
    return metrics["perf/images_per_sec"], metrics["perf/data_wait_share"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=REPO_ROOT / "data" / "imagenet-sample-100")
    parser.add_argument("--samples", type=int, default=640, help="training images")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--decode", choices=DECODE_PLACES, action="append", help="repeatable (default: cpu)"
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prepared", action="store_true", help="also on a prepared copy")
    parser.add_argument(
        "--format", choices=("files", "shards"), default="files",
        help="shards: our loader on shards against files, and the open time at --open-files",
    )  # fmt: skip
    parser.add_argument("--open-files", type=int, default=100_000, help="with --format shards")
    parser.add_argument("--train", action="store_true", help="also the headline experiment")
    parser.add_argument("--epochs", type=int, default=3, help="with --train")
    parser.add_argument("--train-decode", choices=DECODE_PLACES, default="auto")
    parser.add_argument(
        "--train-compiled", action="store_true", help="also train with model.compile=true"
    )
    args = parser.parse_args()
    args.decode = args.decode or ["cpu"]
    photos = [p for p in list_images(args.images, args.images) if p.suffix.upper() == ".JPEG"]
    if not photos:
        raise SystemExit(
            f"No photos under {args.images}: tar -xf ../shared/data/"
            "imagenet-sample-100.tar -C data/"
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = [parse_header(p.read_bytes()).size for p in photos]
    cpu = available_cpus()
    print(
        f"{len(photos)} photos (median {statistics.median(w for w, _ in sizes)}x"
        f"{statistics.median(h for _, h in sizes)} px) linked {args.samples} times; batch "
        f"{args.batch}, {args.workers} worker(s), decode={','.join(args.decode)}, device {device}, "
        f"{cpu} CPUs, {args.repeats} paired repeats"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = linked_imagenet(photos, args.samples, Path(tmp) / "photos")
        trees = {"original photos": root}
        if args.prepared:
            trees["prepared copy"] = Path(tmp) / "prepared"
            prepare(root, trees["prepared copy"])
        if args.format == "shards":
            baseline = f"imgcls loader (decode={args.decode[0]}), the photos as files"
            shards = write_as_shards(root, Path(tmp) / "shards")
            loaders = {baseline: lambda: imgcls_rate(root, args, device, args.decode[0])}
            for decode in args.decode:
                loaders[f"imgcls loader (decode={decode}), the photos as shards"] = (
                    lambda decode=decode: imgcls_rate(shards, args, device, decode, shards=True)
                )
            label = "shards/files"
        else:
            baseline = "torchvision ImageFolder + PIL, original photos"
            loaders = {baseline: lambda: torchvision_rate(root, args, device)}
            for name, tree in trees.items():
                for decode in args.decode:
                    loaders[f"imgcls loader (decode={decode}), {name}"] = (
                        lambda tree=tree, decode=decode: imgcls_rate(tree, args, device, decode)
                    )
            label = "imgcls/torchvision"
        rates = paired_repeats(loaders, args.repeats)
        for name, runs in rates.items():
            print(f"{name}: {spread(runs)} img/s")
            if name != baseline:
                print("  " + ratio_line(label, runs, rates[baseline], digits=2))
        if args.format == "shards":
            opening(photos[0], args, device, Path(tmp))
        picked = choose_decode(args.train_decode, device)
        for compiled in (False, True)[: 1 + args.train_compiled] if args.train else ():
            rate, wait = train_rates(root, args, compiled)
            print(
                f"resnet50_imagenet{', compiled' if compiled else ''} "
                f"(decode={args.train_decode}: {picked}), {args.epochs} epochs: {rate:,.0f} "
                f"img/s (last epoch), data wait {wait:.1%}"
            )


if __name__ == "__main__":
    main()
