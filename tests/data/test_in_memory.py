"""data/in_memory.py: the order a process visits (a permutation of (seed, epoch), or a weighted
draw, dealt out by rank; evaluation unpadded; repeated augmentation), batches indexed out of
tensors held in memory, and where those tensors are held."""

import math

import pytest
import torch
from torch.utils.data import DistributedSampler

from imgcls.data.in_memory import DeviceResidency, IndexedBatches, ShardedOrder

CPU = torch.device("cpu")


def order_of(size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    order = ShardedOrder(size, True, seed, rank, world)
    order.set_epoch(epoch)
    return order.indices()


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


def test_a_training_epoch_is_a_permutation_of_seed_and_epoch_alone() -> None:
    first = order_of(50, seed=3, epoch=2)
    assert sorted(first.tolist()) == list(range(50))  # each image once
    assert torch.equal(order_of(50, seed=3, epoch=2), first)  # a fresh object: the same order
    assert not torch.equal(order_of(50, seed=3, epoch=3), first)
    assert not torch.equal(order_of(50, seed=4, epoch=2), first)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_deal_out_the_one_order_a_single_process_visits(world: int) -> None:
    """12 images: no padding, so the ranks' shares are disjoint and, read step by step, are the
    order one process would visit."""
    shares = [order_of(12, 5, 1, rank, world) for rank in range(world)]
    assert all(len(share) == 12 // world for share in shares)
    assert not set(shares[0].tolist()) & set(shares[1].tolist())
    dealt = torch.stack(shares, dim=1).flatten()
    assert torch.equal(dealt, order_of(12, 5, 1))


def test_padding_repeats_as_few_images_as_it_must() -> None:
    shares = [order_of(11, 5, 0, rank, 4) for rank in range(4)]
    assert [len(share) for share in shares] == [3, 3, 3, 3]
    counts = torch.bincount(torch.cat(shares), minlength=11)
    assert counts.min() == 1
    assert int((counts == 2).sum()) == 1  # 12 places for 11 images: one image twice


@pytest.mark.parametrize(("size", "world"), [(11, 3), (10, 4), (7, 1), (2, 3)])
def test_evaluation_deals_every_image_once_in_order_with_no_padding(size: int, world: int) -> None:
    orders = [ShardedOrder(size, False, 3, rank, world) for rank in range(world)]
    for order in orders:
        order.set_epoch(5)  # no effect on evaluation
    shares = [order.indices() for order in orders]
    assert [len(order) for order in orders] == [len(share) for share in shares]
    assert [len(share) for share in shares] == [len(range(r, size, world)) for r in range(world)]
    assert sorted(torch.cat(shares).tolist()) == list(range(size))
    assert all(torch.equal(share, share.sort().values) for share in shares)


def test_weights_draw_images_in_proportion_with_replacement() -> None:
    weights = torch.cat([torch.zeros(1000), torch.ones(1000), torch.full((1000,), 3.0)])
    order = ShardedOrder(3000, True, seed=1, weights=weights)
    drawn = order.indices()
    assert len(drawn) == 3000
    assert int(drawn.min()) >= 1000  # weight 0: never drawn
    assert 0.72 < float((drawn >= 2000).float().mean()) < 0.78  # 3 : 1
    assert len(set(drawn.tolist())) < 2000  # with replacement: some twice, some never
    assert torch.equal(ShardedOrder(3000, True, seed=1, weights=weights).indices(), drawn)


def held_images(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i all pixels i, label 100 + i: a batch says which images it indexed."""
    images = torch.arange(size, dtype=torch.uint8).view(size, 1, 1, 1).expand(size, 3, 4, 4)
    return images.contiguous(), torch.arange(size) + 100


@pytest.mark.parametrize(("drop_last", "sizes"), [(False, [4, 4, 2]), (True, [4, 4])])
def test_indexed_batches_are_the_orders_images_and_labels(drop_last: bool, sizes: list) -> None:
    images, labels = held_images(10)
    order = ShardedOrder(10, True, seed=2)
    batches = IndexedBatches(images, labels, 4, order, drop_last)
    assert len(batches) == len(sizes)
    order.set_epoch(1)  # as Lightning does, through the loader's `sampler`
    assert batches.sampler is order
    got = list(batches)
    assert [len(batch_labels) for _, batch_labels in got] == sizes
    for batch_images, batch_labels in got:
        assert batch_images.dtype == torch.uint8
        assert batch_images.shape[1:] == (3, 4, 4)
        assert torch.equal(batch_images[:, 0, 0, 0].long() + 100, batch_labels)  # paired
    visited = torch.cat([batch_labels for _, batch_labels in got]) - 100
    assert torch.equal(visited, order.indices()[: sum(sizes)])


def test_indexed_evaluation_batches_keep_the_last_partial_one() -> None:
    images, labels = held_images(10)
    batches = IndexedBatches(images, labels, 4, ShardedOrder(10, False), drop_last=False)
    assert [batch_labels.tolist() for _, batch_labels in batches] == [
        [100, 101, 102, 103],
        [104, 105, 106, 107],
        [108, 109],
    ]


def test_residency_keeps_host_tensors_where_they_are_off_cuda() -> None:
    images, labels = held_images(4)

    def needed() -> int:
        raise AssertionError("no device memory to weigh off CUDA")

    placed = DeviceResidency().place((images, labels), CPU, needed)
    assert placed[0] is images
    assert placed[1] is labels


def test_residency_leaves_data_too_large_for_the_gpu_on_the_host_and_decides_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (asked.append(1) or 3000, 0))
    images, labels = held_images(4)
    residency = DeviceResidency()
    sizes = []

    def needed() -> int:
        sizes.append(1)
        return 1000  # more than a quarter of the 3,000 bytes free

    for _ in range(2):  # one call per split; the answer holds for all
        placed = residency.place((images, labels), torch.device("cuda"), needed)
        assert placed[0] is images
        assert placed[1] is labels
    assert len(sizes) == len(asked) == 1


@pytest.mark.cuda
def test_residency_copies_what_fits_to_the_gpu_once() -> None:
    images, labels = held_images(4)
    residency = DeviceResidency()
    device = torch.device("cuda")
    first = residency.place((images, labels), device, lambda: images.nbytes + labels.nbytes)
    assert all(t.is_cuda for t in first)
    assert torch.equal(first[0].cpu(), images)
    again = residency.place((images, labels), device, lambda: 0)
    assert again[0] is first[0]  # the same copy: nothing crosses from the host again
    assert again[1] is first[1]
