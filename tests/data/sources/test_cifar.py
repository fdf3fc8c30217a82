"""data/sources/cifar.py on tiny generated batches: in memory, split, fine labels, missing or
undownloadable data."""

from collections import Counter
from pathlib import Path

import pytest
import torch

from imgcls.data.sources.cifar import CIFAR10DataModule, CIFAR100DataModule
from imgcls.utils.errors import UserError
from tests.data_factory import write_cifar


@pytest.mark.usefixtures("fake_cifar_integrity")
def test_cifar10_in_memory_with_a_stratified_seeded_val_split(tmp_path: Path) -> None:
    write_cifar(tmp_path, 10, per_class=10, test_per_class=3)
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=20, split_seed=1)
    dm.setup()
    assert dm.class_names == [f"class{c}" for c in range(10)]
    train, val, test = dm.splits.train, dm.splits.val, dm.splits.test
    assert (len(train), len(val), len(test)) == (80, 20, 30)
    assert Counter(val.tensors[1].tolist()) == dict.fromkeys(range(10), 2)  # stratified
    images = train.tensors[0]
    assert images.dtype == torch.uint8
    assert images.shape[1:] == (3, 32, 32)
    again = CIFAR10DataModule(root=str(tmp_path), val_size=20, split_seed=1)
    again.setup()
    assert torch.equal(again.splits.val.tensors[0], val.tensors[0])
    other = CIFAR10DataModule(root=str(tmp_path), val_size=20, split_seed=2)
    other.setup()
    assert not torch.equal(other.splits.val.tensors[0], val.tensors[0])
    assert dm.resolved_workers() == 0  # in memory: no worker processes


@pytest.mark.usefixtures("fake_cifar_integrity")
def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    write_cifar(tmp_path, 100, per_class=5, test_per_class=1)
    dm = CIFAR100DataModule(root=str(tmp_path), val_size=100)
    dm.setup()
    assert dm.num_classes == 100
    assert len(dm.splits.test) == 100
    assert sorted(set(dm.splits.val.tensors[1].tolist())) == list(range(100))


def test_missing_cifar_says_where_to_put_it(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"cifar-10-batches-py.*data\.download=true"):
        dm.setup()


def test_failed_download_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    dm = CIFAR10DataModule(root=str(tmp_path), download=True)
    with pytest.raises(UserError, match=r"Could not download CIFAR10.*no route to host"):
        dm.setup()
