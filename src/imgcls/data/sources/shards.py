"""A dataset as LitData shards (`data=shards data.root=DIR|s3://bucket/prefix`): a few large
files per split instead of millions of small ones, streamed from a local disk, a shared file
system or an object store, written by `imgcls-prepare SRC DST --format shards`.

Listing and opening millions of JPEGs is slow on a shared file system and slower in a bucket;
a shard holds thousands of images back to back, and LitData streams them (chunks downloaded
ahead, cached on local disk), gives each rank and each loader worker its share, shuffles by
(seed, epoch), and keeps its place in the checkpoint: Lightning saves the train loader's state
with every checkpoint and restores it on a resume, so a run resumed mid-epoch reads the rest of
that epoch, not its start; its workers live through the run. Validation and test read every
image exactly once, each rank a contiguous run of them (so each chunk is read by about one rank;
ranks may get unequal shares, as for files). Chunks streamed from an object store are kept in
`data.cache_dir` (beside the data by default), at most `data.cache_size` a split. Every chunk
is checked against its split's index.json before a run: one cut short on a disk or in a bucket
is one line, not a loader worker's timeout mid-epoch (`imgcls-verify` lists them all).

Layout of DST: `meta.json` (class names, one label or several per image, images per class of
each split), and `train/`, `val/`, `test/`, each LitData's `index.json` and `chunk-*.bin`. Each
item is {"image": the file's bytes (or a smaller JPEG of them), "label": the class index (or a
multi-hot row as bytes), "path": the source path as bytes}; paths are kept as bytes because
LitData stores a string that names an existing image file as the decoded image.

The splits are carved by the source module at prepare time (seeded, as a folder run carves
them) and fixed from then on: k-fold, a class-balanced draw and holding the data in memory are
for folder and CSV sources.
"""

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from imgcls.data.datamodule import ImageDataModule, Splits
from imgcls.data.decoding.device import collate_encoded, for_device
from imgcls.data.decoding.images import BAD_IMAGE_ERRORS, decode_any, parse_header, shrunk_jpeg
from imgcls.data.loaders import init_worker
from imgcls.data.sources.decode_place import DecodePlaceChoice
from imgcls.data.sources.files import Sample, read_file_bytes
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.paths import PATH_TEXT

log = get_logger(__name__)
META_FILE = "meta.json"
SPLITS = ("train", "val", "test")
# LitData's obstore client refuses plain http unless told; an http endpoint (a local MinIO or
# moto) is the user's choice of scheme, so allow it. A private name of litdata's: see
# tests/test_lightning_hooks.py.
with contextlib.suppress(ImportError, AttributeError):
    from litdata.streaming import downloader as _litdata_downloader

    _litdata_downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True


def is_remote(root: str) -> bool:
    return "://" in root


def object_store_options(options: dict | None) -> dict[str, Any]:
    """boto3 client arguments for an s3:// root: the config's (endpoint_url, region_name, keys;
    the endpoint may also come from AWS_ENDPOINT_URL), with bounded retries: LitData's default
    (1,000 attempts) makes a wrong endpoint hang instead of failing."""
    from botocore.config import Config

    opts = dict(options or {})
    opts.setdefault(
        "config", Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10)
    )
    return opts


class ShardStore:
    """The files of a shards root, in a folder or in a bucket: read whole, or listed with their
    sizes (one listing a thousand chunks in a bucket, so a run can check every chunk at start)."""

    def __init__(self, root: str, storage_options: dict | None = None) -> None:
        self.root = root
        if is_remote(root):
            import boto3

            self.bucket, _, prefix = root.split("://", 1)[1].partition("/")
            self.prefix = prefix.strip("/")
            self.client = boto3.client("s3", **object_store_options(storage_options))

    def where(self, name: str) -> str:
        """The file's path, or its address in the bucket."""
        return (
            f"{self.root.rstrip('/')}/{name}"
            if is_remote(self.root)
            else str(Path(self.root) / name)
        )

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}".lstrip("/")

    def read(self, name: str) -> bytes:
        if not is_remote(self.root):
            return Path(self.root, name).read_bytes()
        return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()

    def sizes(self, folder: str) -> dict[str, int]:
        """Bytes of each file directly in `folder`, by file name."""
        if not is_remote(self.root):
            found = Path(self.root, folder)
            return {p.name: p.stat().st_size for p in found.iterdir()} if found.is_dir() else {}
        listing = self.client.get_paginator("list_objects_v2")
        prefix = self._key(folder).rstrip("/") + "/"
        return {
            item["Key"][len(prefix) :]: item["Size"]
            for page in listing.paginate(Bucket=self.bucket, Prefix=prefix)
            for item in page.get("Contents", [])
            if "/" not in item["Key"][len(prefix) :]
        }


def read_meta(store: ShardStore) -> dict:
    """DST/meta.json, from a folder or an object store; one line if it is not there."""
    try:
        return json.loads(store.read(META_FILE))
    except Exception as err:  # a missing file, bucket or endpoint: each botocore's own class
        raise UserError(
            f"data.root={store.root} holds no shards ({META_FILE}: {type(err).__name__}: {err}); "
            "write them with: imgcls-prepare SRC DST --format shards"
        ) from None


def check_chunks(store: ShardStore) -> tuple[dict[str, dict], list[tuple[str, str]]]:
    """Each split's LitData index.json, and (file, problem) for every index.json that cannot
    be read and every chunk missing or not the size its index.json gives. A chunk cut short (a
    full disk, an interrupted copy or upload) otherwise fails mid-epoch in a loader worker, as
    LitData's timeout waiting for the rest of it, which names no cause."""
    indexes, problems = {}, []
    for split in SPLITS:
        name = f"{split}/index.json"
        try:
            indexes[split] = json.loads(store.read(name))
        except Exception as err:  # missing (each store's own class) or not JSON
            problems.append((store.where(name), f"unreadable: {type(err).__name__}: {err}"))
    for split, index in indexes.items():
        on_disk = store.sizes(split)
        for chunk in index["chunks"]:
            name, size = chunk["filename"], chunk["chunk_bytes"]
            found = on_disk.get(name)
            if found is None:
                problem = f"missing (its index.json lists it, {size} bytes)"
            elif found != size:
                cut = "cut short" if found < size else "longer than written"
                problem = f"damaged: {found} bytes, its index.json says {size} ({cut})"
            else:
                continue
            problems.append((store.where(f"{split}/{name}"), problem))
    return indexes, problems


def _in_units(size: float) -> str:
    """A size in bytes as a person reads it (decimal units, as LitData's sizes)."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _multi_hot(data: bytes | memoryview) -> torch.Tensor:
    return torch.tensor(list(bytes(data)), dtype=torch.float32)


def make_streaming_dataset(
    input_dir: str,
    transform: Any,
    min_side: int | None,
    on_device: bool,
    multilabel: bool,
    **streaming: Any,
) -> Dataset:
    """A LitData StreamingDataset of one split whose items are (image, label) as our loaders
    give them: uint8 pixels after the worker half of the preset, or a JPEG's bytes for the
    device to decode."""
    from litdata import StreamingDataset

    class Split(StreamingDataset):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Indexed reads (evaluation's contiguous shares) take whole chunks into the cache as
            # iteration does, not each item's byte range: a range read of a chunk whose items
            # LitData keeps in an Arrow footer (it writes one when pyarrow is installed) comes
            # back empty. The cache is made at the first read, from this attribute.
            self._on_demand_bytes = False
            # in memory the workers share: the epoch the loader set in the main process, and
            # whether that epoch resumes a checkpoint's place
            self._loader_epoch = torch.zeros((), dtype=torch.int64).share_memory_()
            self.resuming = torch.zeros((), dtype=torch.bool).share_memory_()

        def set_epoch(self, current_epoch: int) -> None:
            """The loader's epoch, also on a resume (LitData keeps its own count there, and a
            checkpoint taken in the resumed epoch would save that, not this)."""
            self.current_epoch = current_epoch
            self._loader_epoch.fill_(current_epoch)

        def __iter__(self) -> Any:
            """Each epoch in the order of the epoch the loader is at, from its start unless it
            resumes: a persistent worker's copy of the dataset counts its epochs itself and
            keeps a resumed place until it reaches its end, and one cut short
            (trainer.limit_train_batches) would replay an order or a place. (A resumed epoch's
            number comes with LitData's state, which wins.)"""
            self.current_epoch = int(self._loader_epoch)
            if not self.resuming:
                self.reset_state_dict()
            return super().__iter__()

        def __getitem__(self, index: Any) -> tuple[Any, Any]:
            item = super().__getitem__(index)
            data, name = bytes(item["image"]), bytes(item["path"]).decode()
            label = _multi_hot(item["label"]) if multilabel else int(item["label"])
            if on_device:
                return for_device(data, name, min_side), label
            image = decode_any(data, parse_header(data), min_side)
            return (transform(image) if transform else image), label

    return Split(input_dir, **streaming)


class IndexedSplit(Dataset):
    """A streamed split read by index (a map-style dataset for a sampler of our own)."""

    def __init__(self, streaming: Dataset, size: int) -> None:
        self.streaming, self.size = streaming, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Any:
        return self.streaming[int(index)]


class ContiguousShare(DistributedSampler):
    """This rank's share of an evaluation split: a contiguous run of its items, rank r of R
    reading [r * N // R, (r + 1) * N // R). Every item is read once over the ranks (no padding
    duplicates), and each chunk by about one rank: a strided share (every R-th item) has every
    rank read every chunk, R times the bucket reads. A DistributedSampler, so Lightning keeps
    it under DDP."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        size = len(dataset)
        self.start, self.stop = size * rank // num_replicas, size * (rank + 1) // num_replicas
        self.num_samples, self.total_size = self.stop - self.start, size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))


class ShardsDataModule(DecodePlaceChoice, ImageDataModule):
    supports_multilabel = True

    def __init__(
        self,
        root: str,
        decode: str = "cpu",
        storage_options: dict | None = None,
        cache_dir: str | None = None,
        cache_size: int | float | str | None = None,
        **loader_kwargs: Any,
    ) -> None:
        """`storage_options`: boto3 client arguments for an s3:// root (endpoint_url, ...);
        `cache_dir`: where chunks streamed from an object store are kept on this node (LitData's
        default, ~/.lightning/chunks, when null); `cache_size`: how much of them each split may
        keep there (LitData's max_cache_size: "200GB", bytes, or a fraction of the disk's free
        space; LitData's default from the free space when null)."""
        super().__init__(**loader_kwargs)
        self.choose_decode_place(decode)
        if self.sampler != "random":
            raise UserError(
                "data.sampler=balanced draws from a list of every image, which streamed shards "
                "are not: use model.class_weights=balanced, or data=folder / data=csv."
            )
        if self.augmentation.repeats > 1:
            raise UserError(
                "data.augment.repeats repeats images of a list of every image, which streamed "
                "shards are not: use data=folder / data=csv for repeated augmentation."
            )
        self.root = root if is_remote(root) else str(Path(root).expanduser())
        self.storage_options = object_store_options(storage_options) if is_remote(root) else {}
        self.cache_dir, self.cache_size = cache_dir, cache_size
        if cache_size is not None:
            self.cache_cap()  # a size LitData cannot read: one line now, not a traceback later
        self._train_loader: Any = None  # LitData's, for its state
        self._loader_state: dict | None = None  # a checkpoint's

    @cached_property
    def store(self) -> ShardStore:
        return ShardStore(self.root, self.storage_options)

    @cached_property
    def meta(self) -> dict:
        meta = read_meta(self.store)
        if self.multilabel and not meta["multilabel"]:
            raise UserError(
                f"model.task=multilabel, but the shards at {self.root} hold one label per image: "
                "prepare them from a CSV with --multilabel."
            )
        if meta["multilabel"] and not self.multilabel:
            raise UserError(
                f"The shards at {self.root} hold several labels per image: add "
                "model.task=multilabel."
            )
        return meta

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["classes"])

    def class_counts(self, split: str = "train") -> torch.Tensor | None:
        return torch.tensor(self.meta["class_counts"][split], dtype=torch.long)

    def split_size(self, split: str = "train") -> int:
        return int(self.meta["sizes"][split])

    def _split_named(self, dataset: Dataset) -> str:
        return next(name for name in SPLITS if getattr(self.splits, name) is dataset)

    def _split_path(self, name: str) -> str:
        return (
            f"{self.root.rstrip('/')}/{name}"
            if is_remote(self.root)
            else str(Path(self.root) / name)
        )

    def build_splits(self) -> Splits:
        self.meta  # noqa: B018  (read first: the shards' labels and the task must agree)
        indexes = self.check_chunks()
        if is_remote(self.root):
            self.describe_cache(indexes, self.cache_cap())
        if self.trainer is not None:  # LitData would guess the nodes from the GPUs per node
            os.environ["NNODES"] = str(getattr(self.trainer, "num_nodes", 1))
        pipeline, on_device = self.pipeline, self.decodes_on_device()
        make = partial(
            make_streaming_dataset,
            on_device=on_device,
            multilabel=self.multilabel,
            storage_options=self.storage_options or None,
            cache_dir=self.cache_dir,
            max_cache_size=self.cache_size,
        )
        seed = self.run_seed if self.run_seed is not None else 0
        return Splits(
            make(
                self._split_path("train"), pipeline.train_worker, pipeline.train_crop,
                shuffle=True, seed=seed, drop_last=self._drops_last(),
            ),
            make(
                self._split_path("val"), pipeline.eval_worker, pipeline.eval_resize,
                shuffle=False,
            ),
            make(
                self._split_path("test"), pipeline.eval_worker, pipeline.eval_resize,
                shuffle=False,
            ),
        )  # fmt: skip

    def _drops_last(self) -> bool:
        """Whether training drops the items short of a whole batch. LitData drops them to give
        every DDP rank the same batches (a rank with one more would wait for the others at its
        gradients' all-reduce); one process drops them only when it has a full batch besides,
        as the other sources do, so a split smaller than a batch still trains."""
        size = self.split_size("train")
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if world_size == 1:
            return size > self.batch_size
        if size < world_size * self.batch_size:
            raise UserError(
                f"The train split of {self.root} has {size} images, fewer than a batch "
                f"(data.batch_size={self.batch_size}) for each of the {world_size} processes, "
                f"so none would train: set data.batch_size={size // world_size} or less."
            )
        return True

    def check_chunks(self) -> dict[str, dict]:
        """Each split's index.json, once every chunk is checked against it: a damaged one is one
        line before any work, not a loader worker's timeout mid-epoch."""
        indexes, problems = check_chunks(self.store)
        if problems:
            (where, problem), more = problems[0], len(problems) - 1
            raise UserError(
                f"The shard file {where} is {problem}"
                + (f", and {more} more file(s)" if more else "")
                + ". Copy it again, or write the shards again (imgcls-prepare SRC DST --format "
                f"shards); imgcls-verify data=shards data.root={self.root} lists every one."
            )
        return indexes

    def cache_cap(self) -> int:
        """The bytes each split may keep in the cache, as LitData reads data.cache_size (its
        MAX_CACHE_SIZE variable first); a value it cannot read is one line."""
        from litdata.utilities.format import _resolve_max_cache_size

        try:
            return _resolve_max_cache_size(self.cache_size, self.cache_dir)
        except (TypeError, ValueError) as err:
            raise UserError(
                f"data.cache_size={self.cache_size}: {err} (give e.g. 200GB, or null for "
                "LitData's default)"
            ) from None

    def describe_cache(self, indexes: dict[str, dict], cap: int) -> None:
        """One line: where this node keeps the chunks it streams, and how much of them; and one
        warning where a split is larger than that (LitData then deletes each chunk once read:
        every epoch downloads the whole split again)."""
        where = self.cache_dir or "LitData's default folder (~/.lightning/chunks)"
        given = f"data.cache_size={self.cache_size}"
        if self.cache_size is None:
            given = "data.cache_size=null: LitData's default, from the free space there"
        log.info(
            f"Chunks streamed from {self.root} are cached in {where} (this node's), at most "
            f"{_in_units(cap)} for each split ({given})"
        )
        nodes = getattr(self.trainer, "num_nodes", 1) if self.trainer is not None else 1
        sizes = {s: sum(c["chunk_bytes"] for c in i["chunks"]) for s, i in indexes.items()}
        over = {split: size for split, size in sizes.items() if size // nodes > cap}
        if over:
            splits = ", ".join(f"{split} ({_in_units(size)})" for split, size in over.items())
            log.warning(
                f"The chunk cache ({_in_units(cap)} a split) is smaller than {splits}"
                f"{' per node' if nodes > 1 else ''}: every epoch downloads it again; give "
                "data.cache_size more than that, on a disk with room for it."
            )

    def _loader(self, dataset: Dataset, train: bool, shard: bool = True) -> Any:
        """Training: LitData's loader, which shards by rank and worker itself, sets the epoch of
        the (seed, epoch) shuffle, and has a state Lightning keeps in checkpoints; its workers
        live through the run (a fork a worker an epoch otherwise). Evaluation: the split read
        by index, each rank a contiguous share (ContiguousShare), so every image is read once
        and each chunk by about one rank (LitData's own split deals out whole batches and gives
        what is left to the last rank: a small split would leave the other ranks none)."""
        workers = self.resolved_workers()
        rank = self.trainer.global_rank if self.trainer is not None else 0
        common = {
            "num_workers": workers,
            "worker_init_fn": functools.partial(init_worker, rank=rank) if workers > 0 else None,
            "collate_fn": collate_encoded if self.decodes_on_device() else None,
            "pin_memory": self.pin_memory and self.device.type == "cuda",
            "persistent_workers": self.persistent_workers and workers > 0,
            "prefetch_factor": self.prefetch_factor if workers > 0 else None,
        }
        if not train:
            split = IndexedSplit(dataset, self.split_size(self._split_named(dataset)))
            rank, world_size = (0, 1)
            if shard and self.trainer is not None:
                rank, world_size = self.trainer.global_rank, self.trainer.world_size
            share = ContiguousShare(split, world_size, rank)
            return DataLoader(split, self.eval_batch_size, sampler=share, **common)
        self._train_loader = _resumable_loader(dataset, batch_size=self.batch_size, **common)
        if self._loader_state is not None:
            self._train_loader.load_state_dict(self._loader_state)
        return self._train_loader

    def state_dict(self) -> dict[str, Any]:
        """The train loader's place in the epoch, in every checkpoint. Lightning keeps it with
        its loops too, but puts it back only into a loader made after the checkpoint is read,
        and a schedule that asks for the run's length (trainer.estimated_stepping_batches)
        makes the loader before: the resumed epoch would start over."""
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The loader's place: set now where the loader is made already (LitData applies it
        when iteration starts), else when it is made."""
        self._loader_state = state_dict.get("train_loader")
        if self._loader_state is not None and self._train_loader is not None:
            self._train_loader.load_state_dict(self._loader_state)


def _resumable_loader(*args: Any, **kwargs: Any) -> Any:
    """LitData's StreamingDataLoader, whose state is loaded once however many times it is
    given (the datamodule's and Lightning's copies: a second load moves LitData's worker
    cycle on), naming where this process reads the chunks (another node's cache dir may
    differ, and LitData refuses a state that names another)."""
    from litdata import StreamingDataLoader

    class ResumableLoader(StreamingDataLoader):
        _loaded: tuple | None = None
        _resumed_epoch_begun = False

        def __iter__(self) -> Any:
            """The loaded place holds for the first epoch iterated after the load only.
            Lightning leaves a resumed epoch's iterator after its count of batches without
            asking for one more, and LitData clears its restore flag only at an iterator's
            end: the next epoch would start at the loaded place again, yield nothing and
            never validate (or, with kept workers, replay the first epoch's order)."""
            if self.restore and self._resumed_epoch_begun:
                self.restore = False
            self._resumed_epoch_begun = self.restore
            self.dataset.resuming.fill_(bool(self.restore))
            yield from super().__iter__()

        def load_state_dict(self, obj: dict[str, Any]) -> None:
            place = (obj["current_epoch"], obj["num_samples_yielded"], obj["latest_worker_idx"])
            if place == self._loaded:
                return
            self._loaded = place
            state = {**obj, "dataset": dict(obj["dataset"])}
            state["dataset"]["input_dir_path"] = self.dataset.input_dir.path
            state["dataset"]["cache_dir_path"] = self.dataset.cache_dir.path
            super().load_state_dict(state)

    return ResumableLoader(*args, **kwargs)


# -- writing ---------------------------------------------------------------------------------


def shard_item(
    job: list, read: Callable[[str], bytes], root: str, keep_bytes: bool,
    short_side: int | None, long_side: int | None, quality: int, skipped_file: str,
) -> dict | None:  # fmt: skip
    """One source image (a file, or a dataset's row), read by its source's `read`, as a shard
    item (run in LitData's writer processes); None, with the image listed in `skipped_file`,
    for what is no image."""
    path, label = job
    try:
        data = read(path)
        data = data if keep_bytes else shrunk_jpeg(data, short_side, long_side, quality)
        if keep_bytes:
            parse_header(data)
    except BAD_IMAGE_ERRORS as err:
        with open(skipped_file, "a", **PATH_TEXT) as f:  # one short append: safe across workers
            f.write(f"{path}\t{err}\n")
        return None
    if os.path.isabs(path):  # a file: named from the source's root (a row keeps its key)
        with contextlib.suppress(ValueError):
            path = os.path.relpath(path, root)
    stored = bytes(label) if isinstance(label, list) else int(label)
    return {"image": data, "label": stored, "path": path.encode()}


def write_shards(
    samples: dict[str, list[Sample]],
    classes: list[str],
    multilabel: bool,
    src: Path,
    dst: Path,
    workers: int,
    read: Callable[[str], bytes] = read_file_bytes,
    keep_bytes: bool = False,
    short_side: int | None = 320,
    long_side: int | None = None,
    quality: int = 90,
    chunk_bytes: str = "64MB",
    skipped_file: str = "skipped_files.txt",
) -> None:
    """Write each split as LitData shards under dst/<split>, then dst/meta.json; `read` gives a
    sample's encoded image (its file's bytes, or a dataset row's: the source's `bytes_reader`).
    A split whose index.json exists is done and kept; one cut off midway continues from
    LitData's checkpoint (same worker count) when run again."""
    from litdata import optimize

    dst.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        out = dst / split
        if (out / "index.json").is_file():
            log.info(f"{out} is written already: kept")
            continue
        jobs = [
            [path, label.to(torch.uint8).tolist() if multilabel else int(label)]
            for path, label in samples[split]
        ]
        # LitData stages chunks in these folders and empties them first: one of our own
        with tempfile.TemporaryDirectory(prefix=".staging-", dir=dst) as staging:
            os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = f"{staging}/chunks"
            os.environ["DATA_OPTIMIZER_DATA_CACHE_FOLDER"] = f"{staging}/data"
            optimize(
                fn=partial(
                    shard_item, read=read, root=str(src), keep_bytes=keep_bytes,
                    short_side=short_side, long_side=long_side, quality=quality,
                    skipped_file=str(dst / skipped_file),
                ),
                inputs=jobs,
                output_dir=str(out),
                chunk_bytes=chunk_bytes,
                num_workers=min(workers, max(1, len(jobs))),
                use_checkpoint=True,
                start_method="fork",  # spawn re-imports torch in each worker: seconds a split
            )  # fmt: skip
    listing = dst / skipped_file
    skipped = set()
    if listing.is_file():
        lines = listing.read_text(**PATH_TEXT).splitlines()
        skipped = {line.split("\t", 1)[0] for line in lines}
    kept = {s: [label for path, label in samples[s] if path not in skipped] for s in SPLITS}
    meta = {
        "classes": classes,
        "multilabel": multilabel,
        "sizes": {s: len(labels) for s, labels in kept.items()},
        "class_counts": {s: _class_counts(labels, len(classes)) for s, labels in kept.items()},
    }
    (dst / META_FILE).write_text(json.dumps(meta, indent=1), **PATH_TEXT)


def _class_counts(labels: list, num_classes: int) -> list[int]:
    """Images per class (positives per class, for multi-hot rows)."""
    if labels and isinstance(labels[0], torch.Tensor):
        return torch.stack(labels).sum(dim=0).long().tolist()
    return torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=num_classes).tolist()
