"""Augmentation presets (their sizes, worker and device halves) and MixUp/CutMix through the
classifier; the batched device-side ops themselves: tests/data/augmentation/test_batched.py."""

import pytest
import torch
from torchvision.transforms import v2

from imgcls.data.augmentation.presets import PRESETS, Augmentation, build_pipeline
from imgcls.data.sources.digits import DigitsDataModule
from imgcls.models.classifier import ImageClassifier
from imgcls.utils.errors import UserError

PHOTO = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)


@pytest.mark.parametrize("preset", PRESETS)
def test_worker_side_gives_uint8_at_the_preset_sizes(preset: str) -> None:
    pipeline = build_pipeline(Augmentation(preset), in_memory=False)
    train, evaluated = pipeline.train_worker(PHOTO), pipeline.eval_worker(PHOTO)
    assert train.dtype == evaluated.dtype == torch.uint8
    assert train.shape == (3, pipeline.train_crop, pipeline.train_crop)
    assert evaluated.shape == (3, pipeline.eval_crop, pipeline.eval_crop)
    torch.manual_seed(0)
    first = pipeline.train_worker(PHOTO)
    torch.manual_seed(0)
    assert torch.equal(first, pipeline.train_worker(PHOTO))  # deterministic under a seed
    assert torch.equal(evaluated, pipeline.eval_worker(PHOTO))  # eval is not random


def test_preset_sizes_follow_the_recipes() -> None:
    recipe = build_pipeline(Augmentation("torchvision_recipe"), in_memory=False)
    assert (recipe.train_crop, recipe.eval_resize, recipe.eval_crop) == (176, 232, 224)
    cifar = build_pipeline(Augmentation("cifar"), in_memory=False)
    assert (cifar.train_crop, cifar.eval_resize, cifar.eval_crop) == (32, 32, 32)
    custom = build_pipeline(
        Augmentation("standard"), in_memory=False, train_crop=128, eval_resize=160, eval_crop=144
    )
    assert custom.eval_worker(PHOTO).shape == (3, 144, 144)


def test_classic_imagenet_puts_colour_and_rotation_on_the_device() -> None:
    pipeline = build_pipeline(Augmentation("classic_imagenet"), in_memory=False)
    names = [type(m).__name__ for m in pipeline.train_device]
    assert names == ["RandomAffineBatch", "ColorJitterBatch"]
    batch = torch.rand(4, 3, 224, 224) * 255
    out = pipeline.train_device(batch)
    assert out.shape == batch.shape
    assert out.min() >= 0
    assert out.max() <= 255


@pytest.mark.parametrize("preset", ["none", "standard", "cifar", "cifar_light", "classic_imagenet"])
def test_in_memory_presets_run_on_the_device_at_native_size(preset: str) -> None:
    pipeline = build_pipeline(Augmentation(preset), in_memory=True, native_size=32)
    assert pipeline.train_worker is None
    assert pipeline.eval_device is None  # 32 px stays 32 px: nothing to do at eval
    batch = torch.rand(8, 3, 32, 32) * 255
    out = pipeline.train_device(batch) if pipeline.train_device else batch
    assert out.shape == (8, 3, 32, 32)


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(
        UserError, match=r"Unknown data\.augment\.preset='fancy'.*Options: none, standard"
    ):
        Augmentation("fancy")


def test_cifar_light_crops_are_views_of_the_mirror_padded_image() -> None:
    """Device (grid_sample "reflection") and workers (torchvision "symmetric") pad alike: every
    crop is one of the 25 shifts of the image mirror-padded by 2 px, or its mirror image."""
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator())
    padded = v2.functional.pad(image, [2] * 4, padding_mode="symmetric").float()
    shifts = [padded[:, i : i + 32, j : j + 32] for i in range(5) for j in range(5)]
    views = {view.numpy().tobytes() for shift in shifts for view in (shift, shift.flip(-1))}
    torch.manual_seed(0)
    device = build_pipeline(
        Augmentation("cifar_light"), in_memory=True, native_size=32
    ).train_device
    device_crops = list(device(image[None].float().repeat(64, 1, 1, 1)).round())
    worker = build_pipeline(Augmentation("cifar_light"), in_memory=False).train_worker
    worker_crops = [worker(image).float() for _ in range(64)]
    for crops in (device_crops, worker_crops):
        seen = {crop.numpy().tobytes() for crop in crops}
        assert seen <= views
        assert len(seen) > 10


def test_mixup_cutmix_give_soft_targets_and_the_model_learns_from_them() -> None:
    dm = DigitsDataModule(batch_size=16, augment={"mixup_alpha": 0.4, "cutmix_alpha": 1.0})
    dm.setup()
    images, labels = next(iter(dm.train_dataloader()))

    class Training:
        training = True

    dm.trainer = Training()
    mixed, targets = dm.on_after_batch_transfer((images, labels), 0)
    assert targets.shape == (16, 10)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(16))
    model = ImageClassifier(
        net={"name": "lenet"},
        num_classes=10,
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
        label_smoothing=0.1,
    )
    loss, _ = model._step((mixed, targets), "train")
    assert torch.isfinite(loss)
    model.objective.flush_pending()  # training batches reach the metrics a few at a time
    acc = model.objective.train_metrics["acc"]
    assert int(acc.tp + acc.fn) == 16  # every image scored, against its dominant class
