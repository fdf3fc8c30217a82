"""A linear probe's data: each image's features from a frozen backbone, served as batches.

`FeatureDataModule` wraps the run's image source. Its splits are (features, labels) tensors held
in memory (on the GPU where they fit), so the probe's epochs are the in-memory loaders' indexing
(data/loaders.py: the same seeded order, resume position and samplers as any source) and the
head alone runs per step. The features come from a `FeatureSource` (models/features.py hands one
over: data/ does not import models/) at the first loader, after a resumed run's weights are back
in the net, from the source's images preprocessed for evaluation (`eval_batches`; the probe runs
with `data.augment.preset=none`, so the train split is un-augmented too).

The key of a split's features here is the data's part: the source, the split's images (each
file's path, label, size and modification time; the bytes of images held in memory), the class
names, the preprocessing (the input contract and the transforms themselves), where photos are
decoded and the run's precision. A source whose images cannot be named so (data=fake, shards)
has its features computed every run.
"""

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from imgcls.data.datamodule import ImageDataModule, Splits
from imgcls.input_contract import InputContract
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)
SPLITS = ("train", "val", "test")


class FeatureSource(Protocol):
    def features(
        self,
        data_key: Mapping[str, Any] | None,
        batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    ) -> tuple[Tensor, Tensor]: ...


def images_fingerprint(dataset: Dataset) -> str | None:
    """A hash of what a split's images are, or None where the dataset cannot say: held pixels,
    files (path, size, time), or the rows of a dataset whose reader names its content."""
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(dataset, TensorDataset):
        for tensor in dataset.tensors:
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{flat.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return None
    reader = getattr(dataset, "reader", None)
    named = reader.fingerprint() if hasattr(reader, "fingerprint") else None
    if named is not None:  # rows of a dataset that names its own content (Hugging Face's)
        digest.update(f"{named}\n".encode())
        for key, label in samples:
            digest.update(f"{key}\t{label}\n".encode())
        return digest.hexdigest()
    for path, label in samples:
        try:
            stat = os.stat(path)
            digest.update(f"{path}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        except OSError:  # a file gone: its features cannot be trusted to anything cached
            return None
    return digest.hexdigest()


class FeatureDataModule(ImageDataModule):
    """The features of `images`' splits, by `source`, as an in-memory data source (batches of
    (features, labels), the feature rows going to the model's head alone)."""

    in_memory = True

    def __init__(self, images: ImageDataModule, source: FeatureSource) -> None:
        super().__init__(
            batch_size=images.batch_size,
            eval_batch_size=images.eval_batch_size,
            num_workers=0,
            mean=images.mean,
            std=images.std,
            sampler=images.sampler,
            multilabel=images.multilabel,
        )
        self.images, self.source = images, source

    @property
    def class_names(self) -> list[str]:
        return self.images.class_names

    @property
    def contract(self) -> InputContract:
        """The images' (what the checkpoint keeps: it is the whole net's, run on images)."""
        return self.images.contract

    @property
    def bad_images_file(self) -> Path | None:
        return self.images.bad_images_file

    def setup(self, stage: str | None = None) -> None:
        """No features yet: a resumed run's weights go back into the net after setup."""
        if self.run_seed is None:
            self.run_seed = torch.initial_seed()

    def _split(self, name: str) -> Dataset:
        self.setup()
        if self.splits is None:
            self.splits = self.build_splits()
        return getattr(self.splits, name)

    def class_counts(self, split: str = "train") -> Tensor | None:
        return self.images.class_counts(split)

    def split_size(self, split: str = "train") -> int:
        return self.images.split_size(split)

    def split_features(self, split: str) -> tuple[Tensor, Tensor]:
        """(features, labels) of a split, all of it: the k-NN classifier's (models/knn.py)."""
        return self._split(split).tensors

    def build_splits(self) -> Splits:
        """Every split's features in one go (the test's too: k-NN scores it against train's).
        One process: `trainer.devices=auto` or a list can start several, which run/checks.py
        cannot count before the run."""
        images, trainer = self.images, self.trainer
        if trainer is not None and trainer.world_size > 1:
            raise UserError(
                f"model.probe.enabled=true runs on one device, and this run has "
                f"{trainer.world_size} processes: the features are computed once and the head "
                "trains on them in seconds; set trainer.devices=1."
            )
        images.trainer = trainer  # its loaders on this run's device, its batches in its precision
        device = self.device
        plugin = getattr(trainer, "precision_plugin", None)
        held = []
        for name in SPLITS:

            def batches(name: str = name) -> Iterable[tuple[Tensor, Tensor]]:
                log.info(f"Computing the features of the {name} split")
                for x, y in images.eval_batches(name, device):
                    yield self._in_run_precision(x), y

            with plugin.forward_context() if plugin else nullcontext():  # autocast where mixed
                features, labels = self.source.features(self.data_key(name), batches)
            held.append(TensorDataset(features, labels))
        log.info(
            f"Features: {held[0].tensors[0].shape[1]} per image; "
            + ", ".join(f"{name} {len(d)}" for name, d in zip(SPLITS, held, strict=True))
        )
        return Splits(*held)

    def data_key(self, split: str) -> dict[str, Any] | None:
        """The data's part of a split's feature key (models/features.py), None where the
        images cannot be named."""
        images = self.images
        dataset = images._split(split)
        fingerprint = images_fingerprint(dataset)
        if fingerprint is None:
            log.info(f"The {split} split's images cannot be named: its features are not cached")
            return None
        pipeline = images.pipeline
        decodes_on_device = getattr(images, "decodes_on_device", None)
        return {
            "source": f"{type(images).__module__}.{type(images).__qualname__}",
            "split": split,
            "images": fingerprint,
            "classes": images.class_names,
            "contract": images.contract.as_dict(),
            "transform": repr(getattr(dataset, "transform", None)),
            "device_transform": repr(pipeline.eval_device),
            "decode_on_device": decodes_on_device() if decodes_on_device else False,
            "precision": str(getattr(self.trainer, "precision", "32-true")),
        }

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Feature rows go on as they are (normalized long ago), in the run's precision; images
        alone (the model's example input) as any source's."""
        if isinstance(batch, Tensor):
            return super().on_after_batch_transfer(batch, dataloader_idx)
        features, labels = batch
        return self._in_run_precision(features), labels
