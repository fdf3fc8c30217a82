"""How a split becomes batches, for every data source: one function, `build_loader`.

- Images read from files: a DataLoader with `workers` processes. Training order is a function
  of (seed, epoch), this process's share of it under DDP, padded to equal shares
  (ShardedOrderSampler); evaluation shares are not padded, so every image is counted once in
  every metric and report.
- Images held in memory: batches indexed out of the tensors where they live (data/in_memory.py),
  in the same orders, with no worker and no per-sample collate.
A process drops its last partial training batch only when it has a full one besides.

Which images a training epoch draws is the sampler's (`data.sampler`, SAMPLERS): a permutation
(random: each image once), or a class-balanced draw with replacement (balanced: each class
equally often, an epoch as many draws as images).
"""

import functools
import math
import os
import signal
from collections.abc import Callable
from typing import Any

import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from imgcls.data.in_memory import IndexedBatches, ShardedOrder
from imgcls.utils.errors import UserError
from imgcls.utils.machine import available_cpus
from imgcls.utils.registry import Registry


def init_worker(worker_id: int, rank: int = 0) -> None:
    """A loader worker ignores SIGUSR1: SLURM's warning of the end (`--signal=USR1@120`)
    reaches every process of the job, and its default action would kill the worker, failing
    the run ("DataLoader worker exited unexpectedly") where the main process saves and stops
    (callbacks/preemption.py). Then Lightning's seeding of the worker, where the run seeds
    workers (it adds its own only to a loader with none)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id, rank)


def auto_workers(devices: int = 1) -> int:
    """Loader workers per device process: its share of the CPUs, one left for the process
    itself. No fixed cap: a CPU core decodes ~200 photos a second, so feeding one modern GPU
    takes every core there is."""
    return max(1, available_cpus() // max(1, devices) - 1)


class ShardedOrderSampler(DistributedSampler):
    """A DataLoader's training sampler: this process's share of the epoch's order
    (data/in_memory.ShardedOrder, the same indices the in-memory batches visit), a function of
    (seed, epoch) alone, so a run resumed at an epoch boundary sees the order the uninterrupted
    run would have. A DistributedSampler, so Lightning leaves it in place under DDP (it shards
    already) and calls `set_epoch` every epoch."""

    def __init__(self, dataset: Dataset, order: ShardedOrder) -> None:
        super().__init__(dataset, num_replicas=order.world_size, rank=order.rank, shuffle=True)
        self.order = order

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        yield from self.order.indices().tolist()


def build_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    seed: int,
    held: tuple[Tensor, Tensor] | None = None,
    weights: Tensor | None = None,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    persistent_workers: bool = True,
    prefetch_factor: int = 2,
    pin_memory: bool = False,
    repeats: int = 1,
) -> DataLoader | IndexedBatches:
    """This process's batches of `dataset` (`rank` of `world_size`). `seed`: the run's, which
    with the epoch alone fixes the training order (not the generator's state, which the
    per-step reseed moves: a loader built later, or on another rank, would draw another order
    and images would be skipped or seen twice). `held`: the split's images
    and labels, for a source held in memory, where they live (the caller moves them to the
    device once); `weights`: training images drawn in proportion to them (one per image);
    `repeats`: repeated augmentation (each training image that many times in a row, see
    ShardedOrder); `workers` and the rest apply to datasets read from files."""
    drop_last = train and math.ceil(len(dataset) / world_size) > batch_size
    order = ShardedOrder(len(dataset), train, seed, rank, world_size, weights, repeats)
    if held is not None:
        return IndexedBatches(*held, batch_size, order, drop_last)
    if train:
        sampler = ShardedOrderSampler(dataset, order)
    elif world_size > 1:  # each image evaluated once: no padding to equal shares
        sampler = UnrepeatedDistributedSampler(dataset, world_size, rank, shuffle=False)
    else:
        sampler = None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        worker_init_fn=functools.partial(init_worker, rank=rank) if workers > 0 else None,
        persistent_workers=persistent_workers and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        pin_memory=pin_memory,
        collate_fn=getattr(dataset, "collate_fn", None),
    )


def dataset_labels(dataset: Dataset) -> torch.Tensor | None:
    """A split's labels without reading an image (class indices, or multi-hot rows): held in
    memory, or listed with the files; None for a dataset that makes its labels as it goes
    (data=fake)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return None
    labels = [label for _, label in samples]
    if labels and isinstance(labels[0], torch.Tensor):
        return torch.stack(labels)
    return torch.tensor(labels, dtype=torch.long)


# how training images are drawn (`data.sampler`): each image's weight in the draw, or None for
# a permutation (each image once an epoch)
SAMPLERS: Registry[Callable[[Any, Dataset], torch.Tensor | None]] = Registry("data.sampler")
SAMPLERS.add("random", lambda datamodule, dataset: None)


@SAMPLERS.register("balanced")
def balanced_draw(datamodule: Any, dataset: Dataset) -> torch.Tensor:
    """Each image's weight in a class-balanced draw: 1 / its class's count."""
    labels = dataset_labels(dataset)
    if labels is None:
        raise UserError(
            f"data.sampler=balanced needs a data source that knows its labels; "
            f"{type(datamodule).__name__} makes them as it goes: use data.sampler=random."
        )
    counts = torch.bincount(labels, minlength=datamodule.num_classes)
    return 1.0 / counts[labels].double()
