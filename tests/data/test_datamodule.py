"""The base DataModule: its loaders, device-side normalization and per-step augmentation
randomness (the sources' own splits: tests/data/sources/)."""

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.precision import HalfPrecision
from torch.utils.data import DataLoader, TensorDataset

from imgcls.data.in_memory import IndexedBatches, ShardedOrder
from imgcls.data.loaders import ShardedOrderSampler
from imgcls.data.sources.digits import DigitsDataModule
from imgcls.data.sources.fake import FakeDataModule
from imgcls.input_contract import InputContract
from imgcls.utils.errors import UserError
from imgcls.utils.seeding import reseed
from tests.helpers import at_batch, fake_trainer


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=32)
    dm.setup()
    return dm


def test_normalize_matches_the_textbook_formula() -> None:
    dm = DigitsDataModule(mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(4)
    out, out_labels = dm.on_after_batch_transfer((images, labels), 0)
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 0.125]).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    assert out_labels is labels


def test_the_input_contract_round_trips_pixels_and_checkpoint_data() -> None:
    contract = InputContract(36, 32, (0.1, 0.2, 0.3), (0.5, 0.25, 0.125))
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(contract.denormalize(contract.normalize(pixels)), pixels)
    assert InputContract.from_dict(contract.as_dict()) == contract
    dm = DigitsDataModule(mean=contract.mean, std=contract.std)
    assert (dm.contract.resize, dm.contract.crop) == (32, 32)  # the digits' own size
    torch.testing.assert_close(dm.on_after_batch_transfer(pixels, 0), contract.normalize(pixels))


def test_in_memory_batches_are_indexed_in_the_samplers_order(digits: DigitsDataModule) -> None:
    loader = digits.train_dataloader()
    assert isinstance(loader, IndexedBatches)  # no DataLoader, no per-sample collate
    images, _labels = next(iter(loader))
    assert images.dtype == torch.uint8
    assert images.shape == (32, 3, 32, 32)
    assert len(loader) == 1257 // 32  # the last partial batch dropped
    assert len(digits.val_dataloader()) == math.ceil(180 / 32)  # evaluation keeps it

    def labels_in(epoch: int) -> torch.Tensor:
        loader.sampler.set_epoch(epoch)  # as Lightning does at every epoch start
        return torch.cat([labels for _, labels in loader])

    assert not torch.equal(labels_in(0), labels_in(1))  # reshuffled every epoch
    assert torch.equal(labels_in(1), labels_in(1))  # the same order for the same epoch
    # the order a DataLoader with our sampler gives (a resumed run replays it)
    train = digits.splits.train
    sampler = ShardedOrderSampler(train, ShardedOrder(len(train), True, loader.sampler.seed))
    sampler.set_epoch(1)
    reference = DataLoader(train, batch_size=32, sampler=sampler, drop_last=True)
    assert torch.equal(labels_in(1), torch.cat([labels for _, labels in reference]))


def test_repeated_augmentation_is_refused_where_it_cannot_repeat(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="a whole number"):
        DigitsDataModule(augment={"repeats": 0})
    from imgcls.data.sources.shards import ShardsDataModule

    with pytest.raises(UserError, match="streamed shards"):
        ShardsDataModule(root=str(tmp_path), augment={"repeats": 3})


def test_a_rank_with_less_than_a_batch_still_trains() -> None:
    """DDP over 2 processes, 100 images, batch 64: each rank has 50, one partial batch."""

    dm = DigitsDataModule(batch_size=64)
    dm.setup()
    dm.splits.train = TensorDataset(*(t[:100] for t in dm.splits.train.tensors))
    dm.trainer = fake_trainer(world_size=2, rank=1)
    assert len(dm.train_dataloader()) == 1


def test_loader_keeps_workers_alive_between_epochs() -> None:
    dm = FakeDataModule(train_size=8, batch_size=4, num_workers=1)
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    assert loader.num_workers == 1


def test_a_source_is_held_to_where_it_says_its_images_live() -> None:
    """in_memory is the one truth: a source returning tensors without saying so would train
    with no augmentation and no error."""
    from imgcls.data.datamodule import ImageDataModule, Splits

    class Tensors(ImageDataModule):
        class_names = ["a", "b"]

        def build_splits(self) -> Splits:
            data = TensorDataset(
                torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1] * 2)
            )
            return Splits(data, data, data)

    with pytest.raises(UserError, match=r"returned TensorDatasets but its in_memory is False"):
        Tensors().setup()
    held = type("Held", (Tensors,), {"in_memory": True, "native_size": 8})()
    held.setup()
    assert isinstance(held.test_dataloader(), IndexedBatches)


def test_training_batches_draw_randomness_from_seed_and_batch_with_no_callback() -> None:
    dm = FakeDataModule(train_size=8, batch_size=4)
    torch.manual_seed(7)  # what the run's seed_everything does before setup
    dm.setup()
    dm.trainer = fake_trainer(training=True)
    at_batch(dm.trainer, 3)
    dm.on_before_batch_transfer(None, 0)
    first = torch.rand(3)
    torch.rand(5)  # whatever else drew in between (a sanity check, a restore)
    dm.on_before_batch_transfer(None, 0)
    assert torch.equal(torch.rand(3), first)
    at_batch(dm.trainer, 4)  # the next batch: of the same optimizer step, if it accumulates
    dm.on_before_batch_transfer(None, 0)
    assert not torch.equal(torch.rand(3), first)


def test_ddp_loaders_built_after_steps_still_share_one_order() -> None:
    """A loader rebuilt mid-run (reload_dataloaders_every_n_epochs, a resume) on each rank, with
    the generator moved on by the per-step reseed differently on each: the ranks' shares still
    cover every image, as the run's seed and the epoch alone fix the order."""
    shares = []
    for rank in (0, 1):
        dm = FakeDataModule(train_size=40, batch_size=4, num_workers=0)
        torch.manual_seed(7)  # the run's seed_everything, before setup
        dm.setup()
        dm.trainer = fake_trainer(world_size=2, rank=rank)
        reseed(7, step=10 + rank, rank=rank)  # where each rank's generator is when it rebuilds
        sampler = dm.train_dataloader().sampler
        sampler.set_epoch(1)
        shares.append(list(sampler))
    assert sorted(shares[0] + shares[1]) == list(range(40))


def test_under_bf16_true_images_are_bf16_and_multi_hot_targets_float32() -> None:
    """Lightning casts a batch's floats before the transfer (the multi-hot rows, not yet the
    uint8 images): the images leave the device transform in the weights' dtype, the targets in
    float32 (a mixed or smoothed target in bf16 is quantized)."""
    dm = FakeDataModule(train_size=8, batch_size=4, num_workers=0)
    dm.setup()
    dm.trainer = fake_trainer(training=True)
    dm.trainer.precision_plugin = HalfPrecision("bf16-true")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    multi_hot = torch.tensor([[1.0, 0.0, 1.0]] * 4).bfloat16()
    out_images, targets = dm.on_after_batch_transfer((images, multi_hot), 0)
    assert out_images.dtype == torch.bfloat16
    assert targets.dtype == torch.float32


def test_each_rank_augments_the_copies_repeated_augmentation_sends_it_its_own_way() -> None:
    """Per-step reseeding is per rank: the same image on two ranks gets two augmentations."""
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(4)
    outs = []
    for rank in (0, 1, 0):
        dm = DigitsDataModule(augment={"policy": "ta_wide", "erasing": 0.5, "repeats": 2})
        dm.trainer = fake_trainer(world_size=2, rank=rank)
        at_batch(dm.trainer, 7)
        dm.run_seed = 3
        batch = dm.on_before_batch_transfer((images, labels), 0)
        outs.append(dm.device_batch(*batch, training=True)[0])
    assert not torch.equal(outs[0], outs[1])  # rank 0 and rank 1 differ
    assert torch.equal(outs[0], outs[2])  # and a rank repeats itself at the same step
