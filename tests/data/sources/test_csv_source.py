"""data/sources/csv_source.py: a CSV of image paths and labels, one or several per image; its
bad rows."""

import csv
from collections import Counter
from pathlib import Path

import pytest
import torch

from imgcls.data.sources.csv_source import CsvDataModule
from imgcls.data.sources.digits import DigitsDataModule
from imgcls.utils.errors import UserError
from tests.data_factory import PALETTE, write_image


def write_listing(root: Path, rows: list[str], header: str = "path,labels,split") -> Path:
    """labels.csv in root; every path a row names that ends in .png is written as an image."""
    for row in rows:
        path = row.split(",")[0]
        if path.endswith(".png") and "missing" not in path:
            write_image(root / path, PALETTE[len(path) % len(PALETTE)], format="PNG")
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return root / "labels.csv"


def test_one_label_per_image_with_splits_carved_and_bad_rows_left_out(
    tmp_path: Path, caplog
) -> None:
    rows = [f"img/cat{i}.png,cat," for i in range(10)] + [f"img/dog{i}.png,dog" for i in range(10)]
    rows += [
        "img/missing.png,cat,train",  # no such file
        "img/cat0.png,,train",  # no label
        "img/cat1.png,cat;dog,train",  # two labels, one-label data
        "img/cat2.png,cat,holdout",  # no such split
        "img/dog0.png,bird,test",  # not a train label
    ]
    listing = write_listing(tmp_path, rows)
    datamodule = CsvDataModule(csv=str(listing), artifacts_dir=str(tmp_path / "run"))
    with caplog.at_level("WARNING"):
        samples = datamodule.split_samples()
    assert datamodule.class_names == ["cat", "dog"]
    for name, per_class in (("train", 7), ("val", 2), ("test", 1)):
        assert Counter(y for _, y in samples[name]) == {0: per_class, 1: per_class}, name
    assert all(Path(p).is_file() and Path(p).is_absolute() for p, _ in samples["train"])
    bad = (tmp_path / "run" / "bad_rows.txt").read_text().splitlines()
    assert bad == [
        f"labels.csv line 22: no such file {tmp_path / 'img' / 'missing.png'}",
        "labels.csv line 23: cat0.png: no label",
        "labels.csv line 24: cat1.png: 2 labels; several labels per image need "
        "model.task=multilabel",
        "labels.csv line 25: split 'holdout' is not one of train, val, test",
        "labels.csv line 26: dog0.png: label 'bird' is not among the train rows' labels",
    ]
    assert all(f"Row left out: {line}" in caplog.text for line in bad)
    assert "5 row(s) of" in caplog.text
    with open(tmp_path / "run" / "split.csv") as f:
        assert Counter(r["split"] for r in csv.DictReader(f)) == {"train": 14, "val": 4, "test": 2}


def test_several_labels_per_image_are_multi_hot_rows(tmp_path: Path) -> None:
    rows = ["a.png,cat;dog,train", "b.png,dog person,train", "c.png,person,val", "d.png,cat,test"]
    listing = write_listing(tmp_path, rows)
    datamodule = CsvDataModule(
        csv=str(listing), multilabel=True, augment={"preset": "none"}, num_workers=0
    )
    datamodule.setup()
    assert datamodule.class_names == ["cat", "dog", "person"]
    labels = torch.stack([label for _, label in datamodule.splits.train.samples])
    assert labels.tolist() == [[1, 1, 0], [0, 1, 1]]
    assert datamodule.class_counts("train").tolist() == [1, 2, 1]
    _, targets = next(iter(datamodule.train_dataloader()))
    assert targets.shape == (2, 3)  # the batch's targets: multi-hot rows
    given = CsvDataModule(csv=str(listing), multilabel=True, classes=["person", "dog", "cat"])
    assert given.split_samples()["val"][0][1].tolist() == [1, 0, 0]  # in the given order


def test_a_csv_without_its_columns_or_file_is_one_line(tmp_path: Path) -> None:
    listing = write_listing(tmp_path, ["a.png,cat"], header="file,class")
    with pytest.raises(UserError, match="has the columns file, class: Expected a CSV with"):
        CsvDataModule(csv=str(listing)).split_samples()
    with pytest.raises(UserError, match=r"data\.csv=.*nope\.csv is not a file"):
        CsvDataModule(csv=str(tmp_path / "nope.csv")).split_samples()
    with pytest.raises(UserError, match=r"model\.task=multilabel needs labels per image"):
        DigitsDataModule(multilabel=True)
    with pytest.raises(UserError, match=r"data\.sampler=balanced draws each class equally often"):
        CsvDataModule(csv=str(listing), multilabel=True, sampler="balanced")
