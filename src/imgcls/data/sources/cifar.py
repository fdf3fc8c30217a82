"""CIFAR-10 / CIFAR-100 in torchvision's on-disk format (`data=cifar10`, `data=cifar100`).

The 60,000 32x32 images are held in memory as one uint8 tensor: no loader workers, and the
augmentation (pad-4 crop + flip with `augment=cifar`) runs batched on the device. The validation
split is carved from the training set, stratified and fixed by `split_seed`; the official test
set is the test split.
"""

from functools import cached_property
from pathlib import Path

import torch
from torch.utils.data import TensorDataset
from torchvision.datasets import CIFAR10, CIFAR100

from imgcls.data.datamodule import ImageDataModule, Splits
from imgcls.data.sources.files import stratified_split
from imgcls.utils.errors import UserError


class CIFAR10DataModule(ImageDataModule):
    in_memory = True
    native_size = 32
    dataset_class = CIFAR10

    def __init__(
        self,
        root: str,
        download: bool = False,
        val_size: int = 5000,
        split_seed: int = 0,
        **loader_kwargs,
    ) -> None:
        super().__init__(**loader_kwargs)
        self.root = Path(root).expanduser()
        self.download = download
        self.val_size = val_size
        self.split_seed = split_seed

    def _load(self, train: bool) -> CIFAR10:
        name = self.dataset_class.__name__
        folder = self.root / self.dataset_class.base_folder
        try:
            return self.dataset_class(str(self.root), train=train, download=self.download)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
            raise UserError(
                f"{name} not found under {folder}. Put the extracted python version there "
                f"(from {self.dataset_class.url}), point data.root at its parent, or set "
                "data.download=true."
            ) from err
        except OSError as err:  # the download itself failed: offline, proxy, disk
            raise UserError(f"Could not download {name} to {self.root}: {err}") from err

    @cached_property
    def _train_set(self) -> CIFAR10:
        return self._load(train=True)

    @property
    def class_names(self) -> list[str]:
        return list(self._train_set.classes)

    @staticmethod
    def _tensors(dataset: CIFAR10) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(dataset.targets, dtype=torch.int64)

    def build_splits(self) -> Splits:
        images, labels = self._tensors(self._train_set)
        val_fraction = self.val_size / len(labels)
        train, val = stratified_split(
            labels.tolist(), [1 - val_fraction, val_fraction], self.split_seed
        )
        test_images, test_labels = self._tensors(self._load(train=False))
        return Splits(
            TensorDataset(images[train], labels[train]),
            TensorDataset(images[val], labels[val]),
            TensorDataset(test_images, test_labels),
        )


class CIFAR100DataModule(CIFAR10DataModule):
    dataset_class = CIFAR100
