"""Synthetic images of any size and class count: smoke-test a big config (ImageNet shapes)
with no data."""

from torchvision.datasets import FakeData
from torchvision.transforms import v2

from imgcls.data.datamodule import ImageDataModule, Splits


class FakeDataModule(ImageDataModule):
    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        channels: int = 3,
        train_size: int = 256,
        val_size: int = 64,
        test_size: int = 64,
        **loader_kwargs,
    ) -> None:
        super().__init__(**loader_kwargs)
        self._num_classes = num_classes
        self.image_shape = (channels, image_size, image_size)
        self.native_size = image_size
        self.split_sizes = (train_size, val_size, test_size)

    @property
    def class_names(self) -> list[str]:
        return [f"class_{i}" for i in range(self._num_classes)]

    def build_splits(self) -> Splits:
        # Each split draws from its own offset so no image appears in two splits.
        offsets = (0, self.split_sizes[0], self.split_sizes[0] + self.split_sizes[1])
        transforms = (
            self.pipeline.train_worker,
            self.pipeline.eval_worker,
            self.pipeline.eval_worker,
        )
        return Splits(
            *(
                FakeData(
                    size=size,
                    image_size=self.image_shape,
                    num_classes=self._num_classes,
                    transform=v2.Compose([v2.PILToTensor(), transform]),
                    random_offset=offset,
                )
                for size, offset, transform in zip(
                    self.split_sizes, offsets, transforms, strict=True
                )
            )
        )
