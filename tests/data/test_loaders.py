"""data/loaders.py: how a split becomes batches: a training order of (seed, epoch) alone, from
files or from memory alike; DDP shares padded for training and unpadded for evaluation; the last
partial batch; the samplers by name; the worker budget; a split's labels."""

import os
import signal
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset
from torchvision.datasets import FakeData

from imgcls.data.in_memory import IndexedBatches
from imgcls.data.loaders import SAMPLERS, auto_workers, build_loader, dataset_labels
from imgcls.data.sources.fake import FakeDataModule
from imgcls.utils.errors import UserError


def numbered(size: int) -> TensorDataset:
    """Image i all pixels i % 256, label i: a batch's labels say which images it holds."""
    images = torch.arange(size).remainder(256).to(torch.uint8).view(size, 1, 1, 1)
    return TensorDataset(images.expand(size, 3, 2, 2).contiguous(), torch.arange(size))


def loader_of(dataset: TensorDataset, in_memory: bool, batch_size: int, train: bool, **kw):
    held = dataset.tensors if in_memory else None
    return build_loader(dataset, batch_size, train, kw.pop("seed", 0), held, **kw)


def batches_of(loader, epoch: int = 0) -> list[torch.Tensor]:
    """Each batch's labels in an epoch (its start marked as Lightning does)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    return [labels for _, labels in loader]


def visited(loader, epoch: int = 0) -> torch.Tensor:
    return torch.cat(batches_of(loader, epoch))


HELD = pytest.mark.parametrize("in_memory", [False, True], ids=["files", "in memory"])


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
        loader = build_loader(dataset, 20, True, 7, held, weights, rank=rank, world_size=2)
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


@HELD
def test_training_order_is_a_function_of_seed_and_epoch(in_memory: bool) -> None:
    dataset = numbered(40)

    def order(seed: int, epoch: int) -> torch.Tensor:
        return visited(loader_of(dataset, in_memory, 8, True, seed=seed), epoch)

    first = order(7, 1)
    assert sorted(first.tolist()) == list(range(40))  # each image once
    assert torch.equal(order(7, 1), first)  # a new loader (a resumed run): the same order
    assert not torch.equal(order(7, 2), first)
    assert not torch.equal(order(8, 1), first)
    other = visited(loader_of(dataset, not in_memory, 8, True, seed=7), 1)
    assert torch.equal(other, first)  # files and memory visit the same order


@HELD
def test_ddp_training_shares_are_padded_to_the_same_length(in_memory: bool) -> None:
    dataset = numbered(11)
    torch.manual_seed(0)
    shares = [
        visited(loader_of(dataset, in_memory, 3, True, rank=rank, world_size=2)) for rank in (0, 1)
    ]
    assert [len(share) for share in shares] == [6, 6]  # every rank steps as often
    seen = torch.cat(shares)
    assert sorted(set(seen.tolist())) == list(range(11))
    assert len(seen) == 12  # one image twice, to fill the shorter share


@HELD
@pytest.mark.parametrize("world", [2, 3, 4])
def test_ddp_evaluation_counts_every_image_once(in_memory: bool, world: int) -> None:
    dataset = numbered(11)
    loaders = [
        loader_of(dataset, in_memory, 2, False, rank=rank, world_size=world)
        for rank in range(world)
    ]
    shares = [visited(loader) for loader in loaders]
    assert sorted(torch.cat(shares).tolist()) == list(range(11))  # none twice, none left out
    assert [len(share) for share in shares] == [len(range(r, 11, world)) for r in range(world)]


@HELD
@pytest.mark.parametrize(
    ("size", "world", "batch", "train", "sizes"),
    [
        (100, 2, 64, True, [50]),  # no full batch: the partial one trains
        (100, 2, 32, True, [32]),  # a full batch besides: the partial one dropped
        (100, 1, 32, True, [32, 32, 32]),
        (64, 1, 64, True, [64]),
        (100, 1, 32, False, [32, 32, 32, 4]),  # evaluation drops nothing
        (100, 2, 32, False, [32, 18]),
    ],
)
def test_a_process_drops_its_last_partial_batch_only_with_a_full_one_besides(
    in_memory: bool, size: int, world: int, batch: int, train: bool, sizes: list[int]
) -> None:
    torch.manual_seed(0)
    for rank in range(world):
        loader = loader_of(numbered(size), in_memory, batch, train, rank=rank, world_size=world)
        assert isinstance(loader, IndexedBatches) == in_memory
        assert len(loader) == len(sizes)
        assert [len(labels) for labels in batches_of(loader)] == sizes


@HELD
def test_the_random_sampler_visits_each_image_once_an_epoch(in_memory: bool) -> None:
    dataset = numbered(30)
    weights = SAMPLERS["random"](SimpleNamespace(num_classes=3), dataset)
    torch.manual_seed(0)
    loader = loader_of(dataset, in_memory, 10, True, weights=weights)
    for epoch in (0, 1):
        assert sorted(visited(loader, epoch).tolist()) == list(range(30))


def test_balanced_weights_give_each_class_the_same_share() -> None:
    labels = torch.tensor([0] * 6 + [1] * 3 + [2])
    dataset = TensorDataset(torch.zeros(10, 3, 2, 2, dtype=torch.uint8), labels)
    weights = SAMPLERS["balanced"](SimpleNamespace(num_classes=4), dataset)
    assert weights.shape == (10,)
    per_class = torch.zeros(4, dtype=weights.dtype).index_add_(0, labels, weights)
    torch.testing.assert_close(per_class[:3], torch.ones(3, dtype=weights.dtype))
    assert list(SAMPLERS) == ["random", "balanced"]


def test_a_balanced_draw_without_known_labels_is_one_line() -> None:
    with pytest.raises(UserError) as err:
        SAMPLERS["balanced"](FakeDataModule(), FakeData(size=4))
    message = str(err.value)
    assert "\n" not in message
    assert "FakeDataModule makes them as it goes: use data.sampler=random" in message


@pytest.mark.parametrize(
    ("cpus", "devices", "workers"),
    [(16, 1, 15), (16, 2, 7), (16, 4, 3), (16, 0, 15), (2, 1, 1), (2, 4, 1), (1, 1, 1)],
)
def test_auto_workers_take_a_devices_share_of_the_cpus_less_one(
    monkeypatch: pytest.MonkeyPatch, cpus: int, devices: int, workers: int
) -> None:
    monkeypatch.setattr("imgcls.data.loaders.available_cpus", lambda: cpus)
    assert auto_workers(devices) == workers


class Listed(Dataset):
    """A dataset of files: its labels listed with its samples, its images never read here."""

    def __init__(self, samples: list) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        raise AssertionError("dataset_labels read an image")


def test_dataset_labels_come_without_reading_an_image() -> None:
    held = numbered(5)
    assert dataset_labels(held) is held.tensors[1]
    indices = dataset_labels(Listed([("a.jpg", 2), ("b.jpg", 0)]))
    assert indices.dtype == torch.long
    assert indices.tolist() == [2, 0]
    rows = [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0])]
    multi_hot = dataset_labels(Listed([("a.jpg", rows[0]), ("b.jpg", rows[1])]))
    assert torch.equal(multi_hot, torch.stack(rows))
    assert dataset_labels(FakeData(size=3)) is None  # makes its labels as it goes


class Collated(TensorDataset):
    @staticmethod
    def collate_fn(samples: list) -> str:
        return f"{len(samples)} collated"


def test_file_loaders_take_the_datasets_collate_and_workers_only_where_there_are_some() -> None:
    dataset = Collated(*numbered(6).tensors)
    loader = build_loader(dataset, 4, False, 0, persistent_workers=True, prefetch_factor=4)
    assert list(loader) == ["4 collated", "2 collated"]
    assert loader.num_workers == 0
    assert not loader.persistent_workers  # none to keep alive
    assert loader.prefetch_factor is None
    with_workers = build_loader(dataset, 4, True, 0, workers=2, prefetch_factor=4)
    assert with_workers.num_workers == 2  # not started: a DataLoader starts them when iterated
    assert with_workers.persistent_workers
    assert with_workers.prefetch_factor == 4


class SignalledInWorkers(Dataset):
    """Each item read sends its process SIGUSR1, as SLURM's warning reaches every process."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        os.kill(os.getpid(), signal.SIGUSR1)
        return torch.zeros(3, 2, 2, dtype=torch.uint8), index


def test_loader_workers_live_through_slurms_warning_signal() -> None:
    """Its default action would kill each worker (the run failing on "DataLoader worker exited
    unexpectedly") where the main process saves and stops (callbacks/preemption.py)."""
    loader = build_loader(SignalledInWorkers(), 2, False, 0, workers=1)
    assert sorted(torch.cat([labels for _, labels in loader]).tolist()) == [0, 1, 2, 3]
