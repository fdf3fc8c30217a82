"""A prepared copy of a photo dataset, cheaper to decode every epoch: `imgcls-prepare SRC DST`.

Decoding a JPEG costs about in proportion to its pixels, and a 224 px model never sees most of
a 12-megapixel photo's. This writes DST with SRC's folder layout (class folders, train/val/test)
where every image is a baseline RGB JPEG, EXIF rotation applied, shrunk (never enlarged) so its
shorter side is at most `--short-side` px (or its longer side at most `--long-side`), at JPEG
quality `--quality`. The defaults, short side 320 at quality 90, keep more than the 256 px that
evaluation resizes to before its 224 crop, and what RandomResizedCrop needs to crop at 224 px,
while decoding several times faster than full-size photos. Such files are also what
`data.decode=device` sends to the GPU whole.

Every core works on it; a rich progress bar shows it. Each file is written beside its name and
renamed when whole, so a killed run resumes where it stopped (files already there are kept).
Unreadable files are skipped and listed in DST/skipped_files.txt. It ends by printing the
`data.root=DST` to train with.

With `--format shards`, DST is the dataset as LitData shards instead (data/sources/shards.py):
SRC's splits (SRC a folder, an ImageNet tree, a CSV listing, or a Hugging Face dataset: saved
with save_to_disk, parquet or arrow files, or a Hub id, with `--source hf`), carved as
`data=<--source>` carves them with `--split-seed`, each written to DST/<split>/ (index.json and
chunks of images, each shrunk as above or, with --as-is, the file's bytes), with DST/meta.json
(classes, sizes) and DST/split.csv. A split already written is kept; one cut off midway
continues when run again with the same --workers. It ends by printing the `data=shards
data.root=DST` to train with.
"""

import argparse
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from imgcls.data.decoding.images import BAD_IMAGE_ERRORS, shrunk_jpeg
from imgcls.data.sources.csv_source import CsvDataModule
from imgcls.data.sources.files import BAD_ROWS_FILE, list_images
from imgcls.data.sources.folder import FolderDataModule
from imgcls.data.sources.hf import HFDataModule, is_dataset_folder
from imgcls.data.sources.imagenet import ImageNetDataModule
from imgcls.utils.atomic_save import written_whole
from imgcls.utils.errors import UserError
from imgcls.utils.machine import available_cpus
from imgcls.utils.paths import PATH_TEXT, shown

SKIPPED_FILE = "skipped_files.txt"


def prepare_one(
    source: str, target: str, short_side: int | None, long_side: int | None, quality: int
) -> str | None:
    """Write `target` from `source`; the reason it was skipped, or None."""
    try:
        out = shrunk_jpeg(Path(source).read_bytes(), short_side, long_side, quality)
    except BAD_IMAGE_ERRORS as err:
        return str(err)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with written_whole(Path(target)) as staged:
        staged.write_bytes(out)
    return None


def plan(src: Path, dst: Path) -> list[tuple[str, str]]:
    """(source, target) for every image below src whose target is not written yet, found as
    training finds them (links to folders elsewhere followed, links back into src not)."""
    images = list_images(src, tree=src)
    if not images:
        hint = (
            "it is a Hugging Face dataset: write it as shards (--format shards)"
            if is_dataset_folder(src)
            else "expected a folder tree of class folders"
        )
        raise SystemExit(f"No image files under {src}: {hint}.")
    jobs = []
    for path in images:
        target = (dst / path.relative_to(src)).with_suffix(".jpg")
        if not target.exists():
            jobs.append((str(path), str(target)))
    return jobs


def prepare(
    src: Path,
    dst: Path,
    short_side: int | None = 320,
    long_side: int | None = None,
    quality: int = 90,
    workers: int | None = None,
) -> list[tuple[str, str]]:
    """Write the prepared copy; returns the (file, reason) pairs skipped this time."""
    src, dst = src.expanduser().resolve(), dst.expanduser().resolve()
    if not src.is_dir():
        raise SystemExit(f"{src} is not a directory.")
    if dst == src or src in dst.parents:
        raise SystemExit(f"Write the copy outside {src} (DST={dst} is inside it).")
    jobs = plan(src, dst)
    skipped = []
    workers = workers or available_cpus()
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress, ProcessPoolExecutor(workers) as pool:
        task = progress.add_task(f"{shown(dst)}", total=len(jobs))
        write = partial(prepare_one, short_side=short_side, long_side=long_side, quality=quality)
        sources, targets = [s for s, _ in jobs], [t for _, t in jobs]
        results = pool.map(write, sources, targets, chunksize=16)
        for (source, _), reason in zip(jobs, results, strict=True):
            if reason is not None:
                skipped.append((source, reason))
            progress.advance(task)
    if skipped:
        dst.mkdir(parents=True, exist_ok=True)
        with open(dst / SKIPPED_FILE, "a", **PATH_TEXT) as f:
            f.writelines(f"{source}\t{reason}\n" for source, reason in skipped)
    return skipped


def source_module(src: Path, args: argparse.Namespace, dst: Path) -> Any:
    """The data module whose splits the shards hold: SRC as training would read it."""
    source = args.source
    if source == "auto":
        if not src.exists():
            raise SystemExit(f"{src} does not exist (a Hub id takes --source hf).")
        source = "csv" if src.suffix.lower() == ".csv" else "folder"
        source = "hf" if is_dataset_folder(src) else source
    hf_only = {"image_key": args.image_key, "label_key": args.label_key}
    hf_only["cache_dir"] = args.cache_dir
    if source != "hf" and any(hf_only.values()):
        raise SystemExit("--image-key, --label-key and --cache-dir are for a Hugging Face dataset.")
    common = {
        "split_seed": args.split_seed,
        "artifacts_dir": str(dst),
        "multilabel": args.multilabel,
    }
    if source == "csv":
        return CsvDataModule(csv=str(src), **common)
    if source == "hf":  # a saved dataset, a folder of parquet or arrow files, or a Hub id
        return HFDataModule(path=str(src), **hf_only, **common)
    if args.multilabel:
        raise SystemExit(
            "--multilabel needs a CSV or a Hugging Face dataset (a folder gives one label per "
            "image)."
        )
    if source == "imagenet":
        return ImageNetDataModule(root=str(src), **common)
    return FolderDataModule(root=str(src), **common)


def prepare_shards(args: argparse.Namespace, short_side: int | None) -> None:
    from imgcls.data.sources.shards import write_shards

    dst = args.dst.expanduser().resolve()
    try:
        src = args.src.expanduser()
        src = src.resolve() if src.exists() else src  # a Hub id stays one
        module = source_module(src, args, dst)
        samples, classes = module.split_samples(), module.class_names
    except UserError as err:
        raise SystemExit(f"UserError: {err}") from None
    root = module.root.resolve()
    if dst == root or root in dst.parents:
        raise SystemExit(f"Write the shards outside {root} (DST={dst} is inside it).")
    write_shards(
        samples, classes, module.multilabel, root, dst, args.workers or available_cpus(),
        read=module.bytes_reader(), keep_bytes=args.as_is, short_side=short_side,
        long_side=args.long_side, quality=args.quality, skipped_file=SKIPPED_FILE,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "src",
        type=Path,
        help="the dataset: a folder tree of class folders (for shards also a CSV, or a Hugging "
        "Face dataset: saved, parquet or arrow files, a Hub id)",
    )
    parser.add_argument("dst", type=Path, help="where the prepared copy goes")
    parser.add_argument(
        "--format", choices=("files", "shards"), default="files",
        help="files: the same tree of smaller JPEGs; shards: LitData chunks (data=shards)",
    )  # fmt: skip
    parser.add_argument("--short-side", type=int, help="bound the shorter side (px); default 320")
    parser.add_argument("--long-side", type=int, help="bound the longer side (px)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality; default: 90")
    parser.add_argument(
        "--workers", type=int, help="processes; default: every CPU (shards: the same on a rerun)"
    )
    shards = parser.add_argument_group("shards", "with --format shards")
    shards.add_argument(
        "--source", choices=("auto", "folder", "imagenet", "csv", "hf"), default="auto",
        help="how SRC is read, as data=<source> reads it; auto: csv for a .csv file, hf for a "
        "saved dataset or a folder of parquet or arrow files, else folder",
    )  # fmt: skip
    shards.add_argument(
        "--multilabel", action="store_true", help="several labels per image (a CSV, a dataset)"
    )
    shards.add_argument("--image-key", help="hf: the image column (default: found)")
    shards.add_argument("--label-key", help="hf: the label column (default: found)")
    shards.add_argument(
        "--cache-dir", help="hf: where parquet files or a Hub dataset are copied as Arrow first"
    )
    shards.add_argument("--as-is", action="store_true", help="store each file's bytes unchanged")
    shards.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="the seed missing splits are carved with (training's data.split_seed); default 0",
    )
    args = parser.parse_args()
    short_side = args.short_side or (None if args.long_side else 320)
    console = Console(soft_wrap=True)  # commands and paths printed whole, to copy
    if args.format == "shards":
        prepare_shards(args, short_side)
        root = "data.root=" + shown(args.dst.expanduser().resolve())
        for listing, what in (
            (SKIPPED_FILE, "Unreadable images were skipped"),
            (BAD_ROWS_FILE, "Rows without a usable label were left out"),
        ):
            if (args.dst / listing).is_file():
                console.print(f"[yellow]{what}: listed in {shown(args.dst / listing)}")
        console.print(f"Prepared. Train on it with: data=shards {root}")
        return
    skipped = prepare(args.src, args.dst, short_side, args.long_side, args.quality, args.workers)
    if skipped:
        console.print(
            f"[yellow]Skipped {len(skipped)} unreadable file(s): listed in "
            f"{shown(args.dst / SKIPPED_FILE)}"
        )
    console.print(f"Prepared. Train on it with: data.root={shown(args.dst.resolve())}")


if __name__ == "__main__":
    main()
