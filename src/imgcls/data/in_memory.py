"""Batches of a dataset held in memory as one uint8 tensor, drawn by indexing where it lives.

A DataLoader over such a dataset fetches every image alone and stacks them into a batch (a
per-sample collate, ~8 ms a step at 224 px), then copies the batch to the device. Here the split
sits on the training device once (CIFAR-10's 60,000 images take 184 MB) and a batch is one
`index_select` there, as airbench does: during an epoch nothing crosses from the host but the
epoch's order, and the host never waits for the device. On a CPU the same indexing replaces the
per-sample collate.

The order is the one a DataLoader with our sampler gives: a permutation of (seed, epoch) for
training, or a class-balanced draw (the same on every device type, so a run resumed at an epoch
boundary replays it),
padded to a multiple of the world size and dealt out by rank as DistributedSampler does, and a
process drops its last partial batch when it has more than one batch; for evaluation, the images
in order, dealt out by rank with no padding (each counted once).
"""

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from imgcls.utils.logging import get_logger
from imgcls.utils.machine import to_device_async

log = get_logger(__name__)

# (seed, epoch) -> the generator's seed: epochs far apart in seed space
EPOCH_STRIDE = 1_000_003


def epoch_order(size: int, seed: int, epoch: int, weights: Tensor | None = None) -> Tensor:
    """The training order of an epoch, a function of (seed, epoch) alone (on the CPU): a
    permutation, or with `weights` (one per image) `size` draws with replacement in proportion
    to them (data.sampler=balanced: each class as often)."""
    generator = torch.Generator().manual_seed(seed + EPOCH_STRIDE * epoch)
    if weights is None:
        return torch.randperm(size, generator=generator)
    return torch.multinomial(weights, size, replacement=True, generator=generator)


class ShardedOrder:
    """The indices one process visits in an epoch. Lightning calls `set_epoch` at every epoch
    start (it finds this object as the loader's `sampler`)."""

    def __init__(
        self,
        size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        weights: Tensor | None = None,
        repeats: int = 1,
    ) -> None:
        """`weights`: draw training images in proportion to them (see `epoch_order`).
        `repeats`: repeated augmentation (torchvision's RASampler, timm's RepeatAugSampler):
        each image of the order `repeats` times in a row, dealt out by rank so its copies go to
        different processes, the epoch cut to the length it has without repeats (an epoch then
        sees about 1 / repeats of the images, each several times, differently augmented)."""
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.weights = weights
        self.repeats = repeats
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if not self.shuffle:  # evaluation: every image once
            return len(range(self.rank, self.size, self.world_size))
        return math.ceil(self.size / self.world_size)

    def indices(self) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.rank, self.size, self.world_size)
        order = epoch_order(self.size, self.seed, self.epoch, self.weights)
        if self.repeats > 1:
            order = order.view(-1, 1).expand(-1, self.repeats).reshape(-1)
        padding = len(self) * self.world_size - len(order)
        if padding > 0:  # as DistributedSampler: repeat the first ones so every rank has as many
            order = torch.cat([order, order[:padding]])
        return order[self.rank :: self.world_size][: len(self)]


class IndexedBatches:
    """An iterable of (uint8 images, labels) batches, each indexed out of tensors held on one
    device; Lightning takes it as a dataloader."""

    def __init__(
        self, images: Tensor, labels: Tensor, batch_size: int, order: ShardedOrder, drop_last: bool
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        # Lightning looks for these two, as on a DataLoader: `sampler.set_epoch` every epoch
        self.sampler, self.batch_sampler = order, None
        self.drop_last = drop_last

    def __len__(self) -> int:
        count = len(self.sampler) / self.batch_size
        return math.floor(count) if self.drop_last else math.ceil(count)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = to_device_async(self.sampler.indices(), self.images.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.images.index_select(0, index), self.labels.index_select(0, index)


class DeviceResidency:
    """A source's in-memory tensors on the (one) training device, copied there once, when all
    of its splits fit in a quarter of the device's free memory; else they stay on the host and
    batches travel one by one."""

    def __init__(self) -> None:
        self._copies: dict[int, Tensor] = {}
        self._fits: bool | None = None

    def place(
        self, tensors: tuple[Tensor, ...], device: torch.device, needed: Callable[[], int]
    ) -> tuple[Tensor, ...]:
        """`tensors` where batches are drawn from; `needed()`: the bytes of every split."""
        if device.type != "cuda" or not self._fit(device, needed):
            return tensors
        for tensor in tensors:
            if id(tensor) not in self._copies:
                self._copies[id(tensor)] = tensor.to(device)
        return tuple(self._copies[id(t)] for t in tensors)

    def _fit(self, device: torch.device, needed: Callable[[], int]) -> bool:
        if self._fits is None:
            size = needed()
            free, _ = torch.cuda.mem_get_info(device)
            self._fits = size <= free / 4
            where = f"on {device}" if self._fits else "on the host (too large)"
            log.info(f"In-memory data ({size / 2**30:.2f} GiB) held {where}")
        return self._fits
