"""The one LightningDataModule every data source builds on.

A source only says how to build its train/val/test datasets (`build_splits`) and what its classes
are. Everything else lives here once: the augmentation preset, loaders and worker budget, and the
device side. Datasets yield uint8 CHW images; batches travel to the device as uint8 (4x less to
copy than float32) and are augmented (per-image random, batched), normalized and mixed
(MixUp / CutMix) there, in `on_after_batch_transfer`. Datasets held in memory (a TensorDataset)
move to the training device once and are batched there by indexing (data/in_memory.py).
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset
from torchvision.transforms import v2

from imgcls.data.device_decode import DeviceCrops, EncodedBatch, decode_batch
from imgcls.data.in_memory import IndexedBatches, ShardedOrder, epoch_permutation
from imgcls.data.input_contract import InputContract
from imgcls.data.transforms import Pipeline, build_pipeline
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.machine import available_cpus, to_device_async
from imgcls.utils.seeding import reseed

log = get_logger(__name__)

# torchvision's ImageNet statistics: the default for photos and for pretrained backbones.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


def auto_workers(devices: int = 1) -> int:
    """Loader workers per device process: its share of the CPUs, one left for the process
    itself. No fixed cap: a CPU core decodes ~200 photos a second, so feeding one modern GPU
    takes every core there is."""
    return max(1, available_cpus() // max(1, devices) - 1)


class EpochSeededRandomSampler(RandomSampler):
    """Shuffling that is a function of (seed, epoch) alone, as DistributedSampler's is: a run
    resumed at an epoch boundary sees the order the uninterrupted run would have. Lightning calls
    `set_epoch` every epoch, and under DDP swaps in its DistributedSampler (which does the same
    per process), recognizing a RandomSampler."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        super().__init__(dataset)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):  # noqa: ANN204 (an iterator of indices, as RandomSampler's)
        yield from epoch_permutation(len(self.data_source), self.seed, self.epoch).tolist()


class ImageDataModule(LightningDataModule, ABC):
    """Loaders, augmentation and device-side normalization shared by every data source.

    `batch_size` is per device: with DDP on N devices the global batch is N * batch_size.
    `num_workers: auto` gives file-based data a worker budget from the CPU count per device and
    in-memory data none (its augmentation runs on the device).
    """

    #: True where build_splits returns images already decoded into memory at one size, as
    #: TensorDatasets of (uint8 images, labels): the one truth of where a source's images live
    #: (the preset's in-memory half, loaders that index on the device); `setup` holds a source
    #: to it.
    in_memory: bool = False
    #: the one size all images have, where they do: the default crop and eval sizes.
    native_size: int | None = None

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
        augment: str = "none",
        train_crop: int | None = None,
        eval_resize: int | None = None,
        eval_crop: int | None = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.augment = augment
        self.crop_sizes = (train_crop, eval_resize, eval_crop)
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.splits: Splits | None = None
        # training batches are scaled to this many px (set_train_resolution)
        self.train_resolution: int | None = None
        # set by callbacks.StepSeeds: training batches are augmented from (seed, step) RNG
        self.step_seed: int | None = None
        self._pipeline: Pipeline | None = None
        self._batch_mix: v2.Transform | None = None
        self._contract: InputContract | None = None
        # in-memory tensors copied to the (one) training device, and whether they all fit there
        self._on_device: dict[int, torch.Tensor] = {}
        self._fits_device: bool | None = None

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
                self.augment, self.in_memory, *self.crop_sizes, native_size=self.native_size
            )
        return self._pipeline

    @property
    def batch_mix(self) -> v2.Transform | None:
        """MixUp and/or CutMix (one of them per batch when both are on), or None."""
        if self._batch_mix is None and (self.mixup_alpha > 0 or self.cutmix_alpha > 0):
            mixes = []
            if self.mixup_alpha > 0:
                mixes.append(v2.MixUp(alpha=self.mixup_alpha, num_classes=self.num_classes))
            if self.cutmix_alpha > 0:
                mixes.append(v2.CutMix(alpha=self.cutmix_alpha, num_classes=self.num_classes))
            self._batch_mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
        return self._batch_mix

    def set_train_resolution(self, pixels: int | None) -> None:
        """Scale training batches to `pixels` x `pixels` on the device from now on (None: the
        preset's crop). callbacks.ProgressiveResize changes it per epoch; the loaders stay."""
        self.train_resolution = pixels

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

    def resolved_workers(self) -> int:
        if self.num_workers != "auto":
            return int(self.num_workers)
        if self.in_memory:
            return 0
        return auto_workers(self.trainer.num_devices if self.trainer is not None else 1)

    def _loader(self, dataset: Dataset, train: bool, shard: bool = True) -> DataLoader | IndexedBatches:
        """`shard`: this process's share of the data under DDP. Training shares are padded to
        equal length, as DistributedSampler's (Lightning's, for the DataLoaders it asks for);
        evaluation's are not, so every image is counted once in every metric and report (the
        processes then run batch counts that differ by at most one: nothing in an evaluation
        step waits on the others)."""
        batch_size = self.batch_size if train else self.eval_batch_size
        rank, world_size = (0, 1)
        if shard and self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        # A process drops its last partial batch only when it has a full one besides.
        drop_last = train and math.ceil(len(dataset) / world_size) > batch_size
        if self.in_memory:
            images, labels = (self._resident(t) for t in dataset.tensors)
            order = ShardedOrder(len(dataset), train, torch.initial_seed(), rank, world_size)
            return IndexedBatches(images, labels, batch_size, order, drop_last)
        workers = self.resolved_workers()
        if train:
            sampler = EpochSeededRandomSampler(dataset, torch.initial_seed())
        elif world_size > 1:  # each image evaluated once: no padding to equal shards
            sampler = UnrepeatedDistributedSampler(dataset, world_size, rank, shuffle=False)
        else:
            sampler = None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            persistent_workers=self.persistent_workers and workers > 0,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
            pin_memory=self.pin_memory and self.device.type == "cuda",
            collate_fn=getattr(dataset, "collate_fn", None),
        )

    @property
    def device(self) -> torch.device:
        """The device this process trains on (the CPU outside a trainer)."""
        if self.trainer is None:
            return torch.device("cpu")
        return self.trainer.strategy.root_device

    def _resident(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` on the training device, copied there once, when all in-memory splits fit
        in a quarter of its free memory; else where it is (batches then travel one by one)."""
        device = self.device
        if device.type != "cuda" or tensor.device == device or not self._fits_on(device):
            return tensor
        if id(tensor) not in self._on_device:
            self._on_device[id(tensor)] = tensor.to(device)
        return self._on_device[id(tensor)]

    def _fits_on(self, device: torch.device) -> bool:
        if self._fits_device is None:
            splits = self.splits.train, self.splits.val, self.splits.test
            needed = sum(t.nbytes for s in splits for t in getattr(s, "tensors", ()))
            free, _ = torch.cuda.mem_get_info(device)
            self._fits_device = needed <= free / 4
            where = f"on {device}" if self._fits_device else "on the host (too large)"
            log.info(f"In-memory data ({needed / 2**30:.2f} GiB) held {where}")
        return self._fits_device

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._split("train"), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._split("val"), train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._split("test"), train=False)

    def _split(self, name: str) -> Dataset:
        self.setup()
        return getattr(self.splits, name)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 255] -> (x / 255 - mean) / std."""
        return self.contract.normalize(images)

    def on_before_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        if self.step_seed is not None and self.trainer is not None and self.trainer.training:
            reseed(self.step_seed, self.trainer.global_step)
        return batch

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """Encoded photos stay on the host (the decoder reads them from there); the rest moves."""
        if isinstance(batch, tuple | list) and batch and isinstance(batch[0], EncodedBatch):
            return batch[0], batch[1].to(device, non_blocking=True)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        if isinstance(batch, torch.Tensor):  # images alone: the model's example input
            return self.normalize(batch)
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        if isinstance(images, EncodedBatch):
            images, labels = self.decode_and_crop(images, labels, training)
        if not training:
            return self.eval_images(images), labels
        if self.pipeline.train_device is not None:
            images = self.pipeline.train_device(images.float())
        if self.train_resolution and images.shape[-1] != self.train_resolution:
            size = [self.train_resolution] * 2
            images = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True)
        images = self.normalize(images)
        if self.batch_mix is not None:
            images, labels = self.batch_mix(images, labels)
        return images, labels

    def decode_and_crop(
        self, batch: EncodedBatch, labels: torch.Tensor, training: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Photos decoded on the device, cropped as the preset's workers would have: float
        images in [0, 255] at the train (or eval) crop, with the labels of those that decoded."""
        device = labels.device
        images, kept = decode_batch(batch, device, self.bad_images_file)
        if not images:
            raise UserError("No image of a whole batch could be decoded (see bad_images.txt).")
        if len(kept) < len(batch):
            labels = labels[to_device_async(kept, device)]
        pipeline = self.pipeline
        sizes = pipeline.train_crop, pipeline.eval_resize, pipeline.eval_crop
        crops = DeviceCrops(*sizes, pipeline.device_crop)
        return (crops.train(images) if training else crops.eval(images)), labels

    def eval_images(self, images: torch.Tensor) -> torch.Tensor:
        """A loaded batch as evaluation sees it: eval transform on the device, normalized."""
        if self.pipeline.eval_device is not None:
            images = self.pipeline.eval_device(images.float())
        return self.normalize(images)

    def first_train_images(self, count: int, device: torch.device) -> torch.Tensor:
        """The first `count` training images in split order, un-augmented and normalized: the
        same sample on every device and every run, for data-dependent initializations."""
        batches, seen = [], 0
        for batch in self._loader(self._split("train"), train=False, shard=False):
            images, labels = self.transfer_batch_to_device(batch, device, 0)
            if isinstance(images, EncodedBatch):
                images, _ = self.decode_and_crop(images, labels, training=False)
            batches.append(self.eval_images(images[: count - seen]))
            seen += len(batches[-1])
            if seen >= count:
                break
        return torch.cat(batches)
