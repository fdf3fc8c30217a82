"""A dataset as LitData shards (`data=shards data.root=DIR|s3://bucket/prefix`): a few large
files per split instead of millions of small ones, streamed from a local disk, a shared file
system or an object store, written by `imgcls-prepare SRC DST --format shards`.

Listing and opening millions of JPEGs is slow on a shared file system and slower in a bucket;
a shard holds thousands of images back to back, and LitData streams them (chunks downloaded
ahead, cached on local disk), gives each rank and each loader worker its share, shuffles by
(seed, epoch), and keeps its place in the checkpoint: Lightning saves the train loader's state
with every checkpoint and restores it on a resume, so a run resumed mid-epoch reads the rest of
that epoch, not its start. Validation and test read every image exactly once (ranks may get
unequal shares, as for files).

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
import json
import os
import tempfile
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from imgcls.data.datamodule import ImageDataModule, Splits
from imgcls.data.decoding.device import collate_encoded, for_device
from imgcls.data.decoding.images import BAD_IMAGE_ERRORS, decode_any, parse_header, shrunk_jpeg
from imgcls.data.sources.decode_place import DecodePlaceChoice
from imgcls.data.sources.files import Sample
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


def read_meta(root: str, storage_options: dict | None = None) -> dict:
    """DST/meta.json, from a folder or an object store; one line if it is not there."""
    try:
        if not is_remote(root):
            return json.loads((Path(root).expanduser() / META_FILE).read_text(**PATH_TEXT))
        import boto3

        bucket, _, prefix = root.split("://", 1)[1].partition("/")
        client = boto3.client("s3", **object_store_options(storage_options))
        key = f"{prefix.rstrip('/')}/{META_FILE}".lstrip("/")
        return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except Exception as err:  # a missing file, bucket or endpoint: each botocore's own class
        raise UserError(
            f"data.root={root} holds no shards ({META_FILE}: {type(err).__name__}: {err}); "
            "write them with: imgcls-prepare SRC DST --format shards"
        ) from None


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

    def __init__(self, streaming: Dataset, size: int, collate_fn: Any = None) -> None:
        self.streaming, self.size, self.collate_fn = streaming, size, collate_fn

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Any:
        return self.streaming[int(index)]


class ShardsDataModule(DecodePlaceChoice, ImageDataModule):
    supports_multilabel = True

    def __init__(
        self,
        root: str,
        decode: str = "cpu",
        storage_options: dict | None = None,
        cache_dir: str | None = None,
        **loader_kwargs: Any,
    ) -> None:
        """`storage_options`: boto3 client arguments for an s3:// root (endpoint_url, ...);
        `cache_dir`: where chunks streamed from an object store are kept on this node (LitData's
        default, ~/.lightning/chunks, when null)."""
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
        self.cache_dir = cache_dir
        self._train_loader: Any = None  # LitData's, for its state
        self._loader_state: dict | None = None  # a checkpoint's

    @cached_property
    def meta(self) -> dict:
        meta = read_meta(self.root, self.storage_options)
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
        if self.trainer is not None:  # LitData would guess the nodes from the GPUs per node
            os.environ["NNODES"] = str(getattr(self.trainer, "num_nodes", 1))
        pipeline, on_device = self.pipeline, self.decodes_on_device()
        make = partial(
            make_streaming_dataset,
            on_device=on_device,
            multilabel=self.multilabel,
            storage_options=self.storage_options or None,
            cache_dir=self.cache_dir,
        )
        seed = self.run_seed if self.run_seed is not None else 0
        return Splits(
            make(
                self._split_path("train"), pipeline.train_worker, pipeline.train_crop,
                shuffle=True, seed=seed, drop_last=True,
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

    def _loader(self, dataset: Dataset, train: bool, shard: bool = True) -> Any:
        """Training: LitData's loader, which shards by rank and worker itself, sets the epoch of
        the (seed, epoch) shuffle, and has a state Lightning keeps in checkpoints. Evaluation:
        the split read by index, each rank every N-th image as for files, so every image is
        read exactly once (LitData's own split deals out whole batches and gives what is left
        to the last rank: a small split would leave the other ranks none)."""
        if not train:
            size = self.split_size(self._split_named(dataset))
            collate = collate_encoded if self.decodes_on_device() else None
            return super()._loader(IndexedSplit(dataset, size, collate), train, shard)
        workers = self.resolved_workers()
        self._train_loader = _resumable_loader(
            dataset,
            batch_size=self.batch_size,
            num_workers=workers,
            collate_fn=collate_encoded if self.decodes_on_device() else None,
            pin_memory=self.pin_memory and self.device.type == "cuda",
            # LitData sets each epoch's order in the main process's copy of the dataset: a
            # worker kept from the last epoch would replay its order
            persistent_workers=False,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
        )
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
    job: list, root: str, keep_bytes: bool, short_side: int | None, long_side: int | None,
    quality: int, skipped_file: str,
) -> dict | None:  # fmt: skip
    """One source image as a shard item (run in LitData's writer processes); None, with the
    file listed in `skipped_file`, for what is no image."""
    path, label = job
    try:
        data = Path(path).read_bytes()
        data = data if keep_bytes else shrunk_jpeg(data, short_side, long_side, quality)
        if keep_bytes:
            parse_header(data)
    except BAD_IMAGE_ERRORS as err:
        with open(skipped_file, "a", **PATH_TEXT) as f:  # one short append: safe across workers
            f.write(f"{path}\t{err}\n")
        return None
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
    keep_bytes: bool = False,
    short_side: int | None = 320,
    long_side: int | None = None,
    quality: int = 90,
    chunk_bytes: str = "64MB",
    skipped_file: str = "skipped_files.txt",
) -> None:
    """Write each split as LitData shards under dst/<split>, then dst/meta.json. A split whose
    index.json exists is done and kept; one cut off midway continues from LitData's
    checkpoint (same worker count) when run again."""
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
                    shard_item, root=str(src), keep_bytes=keep_bytes, short_side=short_side,
                    long_side=long_side, quality=quality, skipped_file=str(dst / skipped_file),
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
