"""The base DataModule (loaders, device-side normalization) and the digits and fake sources."""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from imgcls import CONFIG_DIR
from imgcls.data.in_memory import IndexedBatches, ShardedOrder
from imgcls.data.loaders import ShardedOrderSampler, build_loader
from imgcls.data.sources.digits import DigitsDataModule
from imgcls.data.sources.fake import FakeDataModule
from imgcls.input_contract import InputContract
from imgcls.utils.errors import UserError
from tests.helpers import fake_trainer


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=32)
    dm.setup()
    return dm


def labels_of(dataset) -> torch.Tensor:
    return dataset.tensors[1]


def test_digits_split_sizes_are_stratified_and_disjoint(digits: DigitsDataModule) -> None:
    train, val, test = (digits.splits.train, digits.splits.val, digits.splits.test)
    assert (len(train), len(val), len(test)) == (1257, 180, 360)
    for split in (train, val, test):
        share = torch.bincount(labels_of(split), minlength=10).float() / len(split)
        assert share.min() > 0.08
        assert share.max() < 0.12
    images = [s.tensors[0].flatten(1) for s in (train, val, test)]
    # no image of one split appears in another (the scans have no exact duplicates across splits)
    rows = {tuple(r.tolist()) for r in images[0]}
    assert not any(tuple(r.tolist()) in rows for r in images[2])


def test_digits_split_is_reproducible_and_seeded() -> None:
    a, b, c = DigitsDataModule(), DigitsDataModule(), DigitsDataModule(split_seed=1)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(labels_of(a.splits.test), labels_of(b.splits.test))
    assert not torch.equal(a.splits.test.tensors[0], c.splits.test.tensors[0])


def test_digits_images_are_uint8_32px_rgb(digits: DigitsDataModule) -> None:
    image, label = digits.splits.train[0]
    assert image.dtype == torch.uint8
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1])
    assert 0 <= int(label) <= 9
    assert int(image.max()) > 200  # the 0..16 scans are rescaled to the full 0..255 range
    assert digits.class_names == [str(d) for d in range(10)]
    assert digits.num_classes == 10


def test_digits_config_statistics_match_the_train_split(digits: DigitsDataModule) -> None:
    cfg = OmegaConf.load(CONFIG_DIR / "data" / "digits.yaml")
    pixels = digits.splits.train.tensors[0].float() / 255
    assert cfg.mean[0] == pytest.approx(pixels.mean().item(), abs=0.005)
    assert cfg.std[0] == pytest.approx(pixels.std().item(), abs=0.005)


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


def test_balanced_sampler_draws_classes_equally_by_seed_and_epoch_in_shares() -> None:
    """190 images of class 0, 10 of class 1: each epoch draws as many images, the classes about
    equally often, a function of (seed, epoch); under DDP each rank takes its share of the one
    draw, the same from files (a DataLoader) as from memory."""
    labels = torch.cat([torch.zeros(190), torch.ones(10)]).long()
    images = torch.arange(200).view(200, 1, 1, 1).expand(200, 3, 1, 1).to(torch.uint8)
    dataset = TensorDataset(images, labels)
    weights = 1.0 / torch.bincount(labels)[labels].double()
    torch.manual_seed(7)

    def drawn(in_memory: bool, rank: int, epoch: int) -> torch.Tensor:
        held = (images, labels) if in_memory else None
        loader = build_loader(dataset, 20, True, held, weights, rank=rank, world_size=2)
        loader.sampler.set_epoch(epoch)  # as Lightning does
        return torch.cat([batch_labels for _, batch_labels in loader])

    for epoch in (0, 1):
        shares = [drawn(True, rank, epoch) for rank in (0, 1)]
        assert all(len(share) == 100 for share in shares)
        for rank in (0, 1):
            assert torch.equal(drawn(False, rank, epoch), shares[rank])
        assert 70 <= int(torch.cat(shares).sum()) <= 130  # class 1: ~100 of 200, not 10
    assert not torch.equal(drawn(True, 0, 0), drawn(True, 0, 1))
    assert torch.equal(drawn(True, 0, 1), drawn(True, 0, 1))


def test_balanced_sampler_needs_known_labels() -> None:
    fake = FakeDataModule(sampler="balanced", batch_size=8, num_workers=0)
    fake.setup()
    with pytest.raises(UserError, match=r"data\.sampler=balanced needs a data source"):
        fake.train_dataloader()
    with pytest.raises(
        UserError, match=r"Unknown data\.sampler='bogus'. Options: random, balanced"
    ):
        FakeDataModule(sampler="bogus")


def test_digits_k_folds_keep_the_test_split_and_validate_on_each_fold_once() -> None:
    folds = [DigitsDataModule(folds=5, fold=i) for i in range(5)]
    for dm in folds:
        dm.setup()
    tests = [labels_of(dm.splits.test) for dm in folds]
    assert all(torch.equal(t, tests[0]) for t in tests)
    vals = [dm.splits.val.tensors[0] for dm in folds]
    assert sum(len(v) for v in vals) == len(folds[0].splits.train) + len(vals[0])
    assert all(len(v) in (287, 288) for v in vals)  # 1,438 non-test images / 5
    counts = torch.stack([torch.bincount(labels_of(dm.splits.val), minlength=10) for dm in folds])
    spread = counts.max(dim=0).values - counts.min(dim=0).values
    assert int(spread.max()) <= 1  # each class dealt evenly over the folds


@pytest.mark.parametrize(("size", "world"), [(10, 2), (11, 2), (7, 3), (5, 1)])
def test_in_memory_shards_cover_the_data_like_distributed_sampler(size: int, world: int) -> None:
    shards = [ShardedOrder(size, True, seed=3, rank=r, world_size=world) for r in range(world)]
    for shard in shards:
        shard.set_epoch(2)
    indices = [shard.indices() for shard in shards]
    assert len({len(i) for i in indices}) == 1  # every rank steps as often
    assert set(torch.cat(indices).tolist()) == set(range(size))
    reference = DistributedSampler(range(size), world, 0, shuffle=False)
    assert len(indices[0]) == len(reference)  # padded to a multiple of the world size


@pytest.mark.parametrize(("world", "repeats"), [(1, 3), (2, 3), (4, 2)])
def test_repeated_augmentation_deals_each_images_copies_to_different_ranks(
    world: int, repeats: int
) -> None:
    """torchvision's RASampler: each image `repeats` times in a row, dealt out by rank, the
    epoch as long as without repeats."""
    size = 60
    shards = [ShardedOrder(size, True, 3, r, world, repeats=repeats) for r in range(world)]
    plain = ShardedOrder(size, True, 3, 0, world)
    indices = [shard.indices() for shard in shards]
    assert all(len(i) == len(plain) == len(plain.indices()) for i in indices)
    seen = torch.cat(indices)
    counts = torch.bincount(seen, minlength=size)
    assert int(counts.max()) == repeats  # an image at most `repeats` times an epoch
    assert int((counts > 0).sum()) == math.ceil(size / repeats)  # the epoch's share of images
    if world >= repeats:  # the copies of one image on different ranks, at the same step
        by_step = torch.stack(indices, dim=1)
        for row in by_step[: len(by_step) // repeats]:
            assert len(set(row.tolist())) <= math.ceil(world / repeats)
    for shard in shards:
        shard.set_epoch(1)
    assert not torch.equal(torch.cat([s.indices() for s in shards]), seen)  # (seed, epoch)


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


@pytest.mark.parametrize(("size", "classes"), [(32, 10), (224, 1000), (64, 3)])
def test_fake_data_shapes_and_labels(size: int, classes: int) -> None:
    dm = FakeDataModule(num_classes=classes, image_size=size, train_size=6, val_size=3, test_size=3)
    dm.setup()
    assert [len(s) for s in (dm.splits.train, dm.splits.val, dm.splits.test)] == [6, 3, 3]
    image, label = dm.splits.val[0]
    assert image.dtype == torch.uint8
    assert image.shape == (3, size, size)
    assert 0 <= int(label) < classes
    assert dm.num_classes == classes
    # deterministic: the same index gives the same image
    assert torch.equal(dm.splits.val[1][0], dm.splits.val[1][0])
    assert not torch.equal(dm.splits.train[0][0], dm.splits.val[0][0])


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


def test_training_batches_draw_randomness_from_seed_and_step_with_no_callback() -> None:
    dm = FakeDataModule(train_size=8, batch_size=4)
    torch.manual_seed(7)  # what the run's seed_everything does before setup
    dm.setup()
    dm.trainer = fake_trainer(training=True)
    dm.trainer.global_step = 3
    dm.on_before_batch_transfer(None, 0)
    first = torch.rand(3)
    torch.rand(5)  # whatever else drew in between (a sanity check, a restore)
    dm.on_before_batch_transfer(None, 0)
    assert torch.equal(torch.rand(3), first)
    dm.trainer.global_step = 4
    dm.on_before_batch_transfer(None, 0)
    assert not torch.equal(torch.rand(3), first)


def test_each_rank_augments_the_copies_repeated_augmentation_sends_it_its_own_way() -> None:
    """Per-step reseeding is per rank: the same image on two ranks gets two augmentations."""
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(4)
    outs = []
    for rank in (0, 1, 0):
        dm = DigitsDataModule(augment={"policy": "ta_wide", "erasing": 0.5, "repeats": 2})
        dm.trainer = fake_trainer(world_size=2, rank=rank)
        dm.trainer.global_step = 7
        dm.run_seed = 3
        batch = dm.on_before_batch_transfer((images, labels), 0)
        outs.append(dm.device_batch(*batch, training=True)[0])
    assert not torch.equal(outs[0], outs[1])  # rank 0 and rank 1 differ
    assert torch.equal(outs[0], outs[2])  # and a rank repeats itself at the same step
