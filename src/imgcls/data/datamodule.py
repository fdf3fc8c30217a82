"""The one LightningDataModule every data source builds on.

A source only says how to build its train/val/test datasets (`build_splits`), what its classes
are and whether it holds its images in memory. The rest is shared, each part in its own module:
the augmentation (data/augmentation/), the loaders and their orders (data/loaders.py,
data/in_memory.py), and what a batch goes through on the device (data/device_batch.py). Datasets
yield uint8 CHW images; batches travel to the device as uint8 and are decoded, augmented,
normalized and mixed there, in `on_after_batch_transfer`. The data path of a run, in order:
`build_splits` -> `_loader` -> `transfer_batch_to_device` -> `on_after_batch_transfer`.
"""

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from imgcls.data.augmentation.presets import Augmentation, Pipeline, build_pipeline
from imgcls.data.device_batch import DeviceBatchTransform, batch_mix, is_encoded
from imgcls.data.in_memory import DeviceResidency, IndexedBatches
from imgcls.data.loaders import SAMPLERS, auto_workers, build_loader, dataset_labels
from imgcls.input_contract import IMAGENET_MEAN, IMAGENET_STD, InputContract
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.seeding import reseed

log = get_logger(__name__)
TEST_IS_VALIDATION = (
    "The test split is the validation split here (ImageNet's val folder): the test scores are "
    "on the images that picked best.ckpt, so they read high. data.val_from_train=N validates "
    "on N held-out train images instead."
)


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


class ImageDataModule(LightningDataModule, ABC):
    """Loaders, augmentation and device-side normalization shared by every data source.

    `batch_size` is per device: with DDP on N devices the global batch is N * batch_size.
    `num_workers: auto` gives file-based data a worker budget from the CPU count per device and
    in-memory data none (its augmentation runs on the device).
    `sampler`: random (each training image once an epoch) or balanced (each class equally
    often, drawn with replacement: SAMPLERS). `augment`: the `data.augment` node, whole
    (data/augmentation/presets.Augmentation); the train crop and eval sizes beside it are the
    input contract's. `multilabel` (settled from model.task): labels are multi-hot rows, for the
    sources that have several labels per image.
    """

    #: True where build_splits returns images already decoded into memory at one size, as
    #: TensorDatasets of (uint8 images, labels): the one truth of where a source's images live
    #: (the preset's in-memory half, loaders that index on the device); `setup` holds a source
    #: to it.
    in_memory: bool = False
    #: the one size all images have, where they do: the default crop and eval sizes.
    native_size: int | None = None
    #: True where a source can give several labels per image (multi-hot targets)
    supports_multilabel: bool = False
    #: True where the test split is the validation split (ImageNet's val folder): the test
    #: score is then on the images that picked best.ckpt, and a run says so
    test_is_validation: bool = False

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int | str = "auto",
        persistent_workers: bool = True,
        pin_memory: bool = True,
        prefetch_factor: int = 2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: Augmentation | Mapping[str, Any] | None = None,
        train_crop: int | None = None,
        eval_resize: int | None = None,
        eval_crop: int | None = None,
        sampler: str = "random",
        multilabel: bool = False,
    ) -> None:
        super().__init__()
        self.augmentation = Augmentation.of(augment)
        SAMPLERS[sampler]
        if multilabel and not self.supports_multilabel:
            raise UserError(
                f"model.task=multilabel needs labels per image, which {type(self).__name__} does "
                "not have: give the images and their labels as a CSV (data=csv data.csv=FILE)."
            )
        if multilabel and sampler == "balanced":
            raise UserError(
                "data.sampler=balanced draws each class equally often, which images with several "
                "labels cannot be: use model.class_weights=balanced (positives weighed) instead."
            )
        self.sampler = sampler
        self.multilabel = multilabel
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.crop_sizes = (train_crop, eval_resize, eval_crop)
        self.splits: Splits | None = None
        # the run's seed, taken at setup (after the run seeded every RNG): on_before_batch_transfer
        self.run_seed: int | None = None
        self._pipeline: Pipeline | None = None
        self._contract: InputContract | None = None
        self._device_batch: DeviceBatchTransform | None = None
        self._residency = DeviceResidency()

    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """Human-readable class names, index-aligned with the labels."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def bad_images_file(self) -> Path | None:
        """Where unreadable files are listed (sources read from files say where)."""
        return None

    @abstractmethod
    def build_splits(self) -> Splits:
        """Build the train/val/test datasets, yielding (uint8 CHW image, int label). File-based
        sources apply `self.pipeline.train_worker` / `eval_worker` per image."""

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = build_pipeline(
                self.augmentation, self.in_memory, *self.crop_sizes, self.native_size
            )
        return self._pipeline

    @property
    def device_batch(self) -> DeviceBatchTransform:
        """What a batch goes through on the device (data/device_batch.py): the one object
        callbacks change (progressive resizing) or read (the mix)."""
        if self._device_batch is None:
            augmentation = self.augmentation
            mix = batch_mix(augmentation.mixup_alpha, augmentation.cutmix_alpha, self.num_classes)
            self._device_batch = DeviceBatchTransform(
                self.pipeline, self.contract, mix, self.bad_images_file
            )
        return self._device_batch

    @property
    def contract(self) -> InputContract:
        """What an image goes through before the model sees it (eval resize and crop, mean and
        std): saved in checkpoints, so predict and export need nothing but the checkpoint."""
        if self._contract is None:
            pipeline = self.pipeline
            self._contract = InputContract(
                pipeline.eval_resize, pipeline.eval_crop, self.mean, self.std
            )
        return self._contract

    def setup(self, stage: str | None = None) -> None:
        if self.run_seed is None:
            self.run_seed = torch.initial_seed()
        if self.splits is None:
            splits = self.build_splits()
            held = [isinstance(s, TensorDataset) for s in (splits.train, splits.val, splits.test)]
            if held != [self.in_memory] * 3:
                raise UserError(
                    f"{type(self).__name__}.build_splits returned "
                    f"{'TensorDatasets' if any(held) else 'datasets read from files'} but its "
                    f"in_memory is {self.in_memory}: a source holding its images in memory sets "
                    "in_memory = True and returns TensorDatasets of (uint8 images, labels)."
                )
            self.splits = splits

    def class_counts(self, split: str = "train") -> torch.Tensor | None:
        """Images per class in a split (with several labels per image, each class's positives),
        None where the source does not know its labels."""
        labels = dataset_labels(self._split(split))
        if labels is None:
            return None
        if labels.ndim == 2:
            return labels.sum(dim=0).long()
        return torch.bincount(labels, minlength=self.num_classes)

    def split_size(self, split: str = "train") -> int:
        """The number of images in a split (all of it, whatever this process's share)."""
        return len(self._split(split))

    def resolved_workers(self) -> int:
        if self.num_workers != "auto":
            return int(self.num_workers)
        if self.in_memory:
            return 0
        return auto_workers(self.trainer.num_devices if self.trainer is not None else 1)

    def _loader(
        self, dataset: Dataset, train: bool, shard: bool = True
    ) -> DataLoader | IndexedBatches:
        """`shard`: this process's share of the data under DDP (data/loaders.py)."""
        rank, world_size = (0, 1)
        if shard and self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        held = None
        if self.in_memory:
            held = self._residency.place(dataset.tensors, self.device, self._held_bytes)
        workers = self.resolved_workers()
        return build_loader(
            dataset,
            self.batch_size if train else self.eval_batch_size,
            train,
            self.run_seed,
            held,
            SAMPLERS[self.sampler](self, dataset) if train else None,
            rank,
            world_size,
            workers,
            self.persistent_workers,
            self.prefetch_factor,
            pin_memory=self.pin_memory and self.device.type == "cuda",
            repeats=self.augmentation.repeats if train else 1,
        )

    def _held_bytes(self) -> int:
        splits = self.splits.train, self.splits.val, self.splits.test
        return sum(t.nbytes for s in splits for t in s.tensors)

    @property
    def device(self) -> torch.device:
        """The device this process trains on (the CPU outside a trainer)."""
        if self.trainer is None:
            return torch.device("cpu")
        return self.trainer.strategy.root_device

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._split("train"), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._split("val"), train=False)

    def test_dataloader(self) -> DataLoader:
        if self.test_is_validation:
            log.warning(TEST_IS_VALIDATION)
        return self._loader(self._split("test"), train=False)

    def _split(self, name: str) -> Dataset:
        self.setup()
        return getattr(self.splits, name)

    def on_before_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        """Randomness that is a function of (seed, batch), so a resumed run draws what the
        uninterrupted one would have drawn (device augmentation, MixUp / CutMix, dropout): the
        global RNGs are re-seeded from (run seed, training batches so far, rank) just before
        each training batch is augmented, so no hook order, loader iterator or sanity check
        between a restore and the first batch can shift the stream (~10 us a step). Batches,
        not optimizer steps: the batches one step accumulates draw each their own. Data order
        is a function of (seed, epoch) (data/loaders.py)."""
        trainer = self.trainer
        if self.run_seed is not None and trainer is not None and trainer.training:
            batches = trainer.fit_loop.epoch_loop.batch_progress.total.ready  # before this one
            reseed(self.run_seed, batches, trainer.global_rank)
        return batch

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """Encoded photos stay on the host (the decoder reads them from there); the rest moves."""
        if is_encoded(batch):
            return batch[0], batch[1].to(device, non_blocking=True)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, torch.Tensor):  # images alone: the model's example input
            return self._in_run_precision(self.contract.normalize(batch))
        images, labels = batch
        if isinstance(labels, torch.Tensor) and labels.is_floating_point():
            labels = labels.float()  # multi-hot rows, which bf16-true's cast reached (exactly)
        training = self.trainer is not None and self.trainer.training
        images, targets = self.device_batch(images, labels, training)
        return self._in_run_precision(images), targets

    def _in_run_precision(self, images: torch.Tensor) -> torch.Tensor:
        """Images in the dtype the net's weights have under `trainer.precision=bf16-true` or
        `16-true` (Lightning casts a batch's floats before the transfer, while ours are still
        uint8); targets are float32 (Lightning's cast made multi-hot rows bf16 before the
        transfer: back to float32 before they are mixed), so soft targets are not quantized."""
        plugin = getattr(self.trainer, "precision_plugin", None)
        return images if plugin is None else plugin.convert_input(images)

    def eval_batches(self, split: str, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        """A split's (images, labels) in split order, all of it whatever this process's share,
        preprocessed for evaluation and normalized on `device`: with `data.augment.preset=none`
        the train split too is un-augmented (a linear probe's features, data/features.py)."""
        for batch in self._loader(self._split(split), train=False, shard=False):
            images, labels = self.transfer_batch_to_device(batch, device, 0)
            yield self.device_batch(images, labels, training=False)

    def first_train_images(self, count: int, device: torch.device) -> torch.Tensor:
        """The first `count` training images in split order, un-augmented and normalized: the
        same sample on every device and every run, for data-dependent initializations."""
        return self.first_images("train", count, device)

    def first_images(self, split: str, count: int, device: torch.device) -> torch.Tensor:
        """The first `count` images of a split in split order, preprocessed for evaluation
        (an export's check, its int8 calibration)."""
        batches, seen = [], 0
        for images, _ in self.eval_batches(split, device):
            batches.append(images[: count - seen])
            seen += len(batches[-1])
            if seen >= count:
                break
        return torch.cat(batches)
