"""The embedded default dataset: scikit-learn's handwritten digits, no download needed.

1,797 real 8x8 scans (16 grey levels), upscaled to 32x32 RGB so every CIFAR-sized net runs on it
unchanged. The train/val/test split is stratified and fixed by `split_seed`; with `folds`, the
validation split is one fold of k-fold cross-validation.
"""

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from imgcls.data.datamodule import ImageDataModule, Splits
from imgcls.data.sources.files import fold_split


def load_digit_images(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as (N, 3, size, size) uint8 images and (N,) int64 labels."""
    digits = load_digits()
    grey = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    grey = F.interpolate(grey, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = grey.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images, torch.as_tensor(digits.target, dtype=torch.int64)


class DigitsDataModule(ImageDataModule):
    in_memory = True

    def __init__(
        self,
        image_size: int = 32,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        folds: int | None = None,
        fold: int = 0,
        **loader_kwargs,
    ) -> None:
        """`folds`: k-fold cross-validation, fold `fold` the validation split of what the test
        split leaves (val_fraction unused)."""
        super().__init__(**loader_kwargs)
        self.native_size = image_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.folds, self.fold = folds, fold

    @property
    def class_names(self) -> list[str]:
        return [str(d) for d in range(10)]

    def build_splits(self) -> Splits:
        images, labels = load_digit_images(self.native_size)
        index = torch.arange(len(labels)).numpy()
        rest, test = train_test_split(
            index, test_size=self.test_fraction, stratify=labels, random_state=self.split_seed
        )
        if self.folds:
            parts = fold_split(labels[rest].tolist(), self.folds, self.fold, self.split_seed)
            train, val = (rest[part] for part in parts)
        else:
            train, val = train_test_split(
                rest,
                test_size=self.val_fraction / (1 - self.test_fraction),
                stratify=labels[rest],
                random_state=self.split_seed,
            )
        return Splits(*(TensorDataset(images[idx], labels[idx]) for idx in (train, val, test)))
