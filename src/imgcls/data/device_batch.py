"""Everything a batch goes through on the device before the model sees it, in one place.

A loaded batch arrives on the device as uint8 images (4x less to copy than float32), or, with
`data.decode=device`, as the files' bytes. Training batches are then:
1. decoded and cropped as the preset's workers would have (`data.decode=device`: nvjpeg on a
   GPU, data/decoding/device.py),
2. augmented by the preset's batched, per-image-random device half (data/augmentation/batched.py),
   and by the policy (data/augmentation/policies.py) where the workers did not apply it,
3. scaled to the progressive-resizing resolution of the epoch, where one is set,
4. normalized by the run's InputContract (the mean and std saved in its checkpoints),
5. partly erased (RandomErasing per image, where asked),
6. mixed (MixUp or CutMix, the labels then soft).
Evaluation batches are decoded and centre-cropped, put through the preset's eval transform and
normalized. The datamodule owns one of these and calls it from `on_after_batch_transfer`.
"""

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from imgcls.data.augmentation.crops import DeviceCrops
from imgcls.data.augmentation.presets import Pipeline
from imgcls.data.decoding.device import EncodedBatch, decode_batch
from imgcls.input_contract import InputContract
from imgcls.utils.errors import UserError
from imgcls.utils.machine import to_device_async


def batch_mix(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> v2.Transform | None:
    """MixUp and/or CutMix (one of them per batch when both are on), or None. They take class
    indices, or multi-hot rows (several labels per image; torchvision >= 0.20), mixed as the
    images are."""
    mixes = []
    if mixup_alpha > 0:
        mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


class DeviceBatchTransform(nn.Module):
    """`(images, labels, training) -> (normalized float images, labels)` on the device."""

    def __init__(
        self,
        pipeline: Pipeline,
        contract: InputContract,
        mix: v2.Transform | None = None,
        bad_images_file: Path | None = None,
    ) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.contract = contract
        self.mix = mix
        self.bad_images_file = bad_images_file
        sizes = pipeline.train_crop, pipeline.eval_resize, pipeline.eval_crop
        self.crops = DeviceCrops(*sizes, pipeline.device_crop)
        # training batches are scaled to this many px (None: the preset's crop)
        self.train_resolution: int | None = None

    def set_train_resolution(self, pixels: int | None) -> None:
        """Scale training batches to `pixels` x `pixels` from now on (None: the preset's crop).
        callbacks.ProgressiveResize changes it per epoch; the loaders stay as they are."""
        self.train_resolution = pixels

    def forward(
        self, images: Tensor | EncodedBatch, labels: Tensor, training: bool
    ) -> tuple[Tensor, Tensor]:
        encoded = isinstance(images, EncodedBatch)
        if encoded:
            images, labels = self.decode_and_crop(images, labels, training)
        if not training:
            return self.eval_images(images), labels
        if self.pipeline.train_device is not None:
            images = self.pipeline.train_device(images.float())
        if encoded and self.pipeline.device_policy is not None:  # the workers' policy, here
            images = self.pipeline.device_policy(images.float())
        if self.train_resolution and images.shape[-1] != self.train_resolution:
            size = [self.train_resolution] * 2
            images = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True)
        images = self.contract.normalize(images)
        if self.pipeline.erasing is not None:
            images = self.pipeline.erasing(images)
        if self.mix is not None:
            images, labels = self.mix(images, labels)
        return images, labels

    def decode_and_crop(
        self, batch: EncodedBatch, labels: Tensor, training: bool
    ) -> tuple[Tensor, Tensor]:
        """Photos decoded on the device, cropped as the preset's workers would have: float
        images in [0, 255] at the train (or eval) crop, with the labels of those that decoded."""
        device = labels.device
        images, kept = decode_batch(batch, device, self.bad_images_file)
        if not images:
            raise UserError("No image of a whole batch could be decoded (see bad_images.txt).")
        if len(kept) < len(batch):
            labels = labels[to_device_async(kept, device)]
        return (self.crops.train(images) if training else self.crops.eval(images)), labels

    def eval_images(self, images: Tensor) -> Tensor:
        """A loaded batch as evaluation sees it: eval transform on the device, normalized."""
        if self.pipeline.eval_device is not None:
            images = self.pipeline.eval_device(images.float())
        return self.contract.normalize(images)


def is_encoded(batch: object) -> bool:
    """A loaded batch of file bytes (data.decode=device): it stays on the host."""
    return isinstance(batch, tuple | list) and bool(batch) and isinstance(batch[0], EncodedBatch)
