"""The one LightningDataModule every data source builds on.

A source only says how to build its train/val/test datasets (`build_splits`) and what its classes
are. Everything else lives here once: loaders, worker settings, and normalization. Datasets yield
uint8 CHW images; batches travel to the device as uint8 (4x less to copy than float32) and are
converted and normalized there, in `on_after_batch_transfer`.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

# torchvision's ImageNet statistics: the default for photos and for pretrained backbones.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


class ImageDataModule(LightningDataModule, ABC):
    """Loaders and device-side normalization shared by every data source.

    `batch_size` is per device: with DDP on N devices the global batch is N * batch_size.
    """

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        persistent_workers: bool = True,
        pin_memory: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers
        self.pin_memory = pin_memory
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.splits: Splits | None = None
        self._scale_shift: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """Human-readable class names, index-aligned with the labels."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abstractmethod
    def build_splits(self) -> Splits:
        """Build the train/val/test datasets, yielding (uint8 CHW image, int label)."""

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = self.build_splits()

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        on_cuda = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            pin_memory=self.pin_memory and on_cuda,
        )

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
        """uint8 [0, 255] -> float, (x / 255 - mean) / std folded into one multiply-add."""
        if images.dtype != torch.uint8:
            return images
        device = images.device
        if device not in self._scale_shift:
            mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
            self._scale_shift[device] = (1.0 / (255.0 * std), -mean / std)
        scale, shift = self._scale_shift[device]
        return torch.addcmul(shift, images.float(), scale)

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        images, labels = batch
        return self.normalize(images), labels
