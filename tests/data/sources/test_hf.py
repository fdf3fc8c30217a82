"""data/sources/hf.py: Hugging Face datasets read in place (saved with save_to_disk, parquet
files), their columns, classes and splits, one or several labels per image, their bad rows."""

import csv
from collections import Counter
from pathlib import Path

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value
from datasets import Image as ImageFeature

from imgcls.data.decoding.device import EncodedJPEG
from imgcls.data.decoding.images import read_rgb
from imgcls.data.sources.files import ImageReader
from imgcls.data.sources.folder import FolderDataModule
from imgcls.data.sources.hf import HFDataModule
from imgcls.train import train
from imgcls.utils.errors import UserError
from tests.data_factory import hf_split


def test_own_splits_by_their_aliases_unlabelled_split_carved_and_bad_rows_listed(
    tmp_path: Path, caplog
) -> None:
    train_split = hf_split(
        tmp_path / "photos", per_class=10, extra=[(b"junk", 0), (None, 1), (b"\xff\xd8\xff", -1)]
    )
    unlabelled = hf_split(tmp_path / "more", per_class=2).map(lambda row: {"label": -1})
    dataset = DatasetDict(
        train=train_split, valid=hf_split(tmp_path / "val", per_class=3), test=unlabelled
    )
    dataset.save_to_disk(tmp_path / "hf")
    run = tmp_path / "run"
    datamodule = HFDataModule(
        path=str(tmp_path / "hf"), artifacts_dir=str(run), augment={"preset": "none"}
    )
    with caplog.at_level("WARNING"):
        samples = datamodule.split_samples()
    assert datamodule.class_names == ["a", "b"]  # the ClassLabel's names
    assert datamodule.columns == ("image", "label")  # found by their features
    assert f"The test split of {tmp_path / 'hf'} has no labels: carved" in caplog.text
    assert {key.split("[")[0] for key, _ in samples["val"]} == {"valid"}
    assert Counter(y for _, y in samples["val"]) == {0: 3, 1: 3}
    carved = {key for key, _ in samples["test"]}
    assert {key.split("[")[0] for key in carved} == {"train"}
    assert carved.isdisjoint(key for key, _ in samples["train"])
    assert (run / "bad_rows.txt").read_text().splitlines() == ["train[22]: no label"]
    assert datamodule.layout_problems() == [("train[22]", "no label")]
    # undecodable bytes and a row without an image: skipped where met, and listed
    datamodule.setup()
    for split in (datamodule.splits.train, datamodule.splits.test):
        for i in range(len(split)):
            image, _ = split[i]
            assert image.shape[0] == 3
    listed = dict(line.split("\t") for line in (run / "bad_images.txt").read_text().splitlines())
    assert listed == {
        "train[20]": "not an image file (no known image format)",
        "train[21]": "the row has no image",
    }


def test_rows_are_decoded_as_the_same_photos_in_files(tmp_path: Path, monkeypatch) -> None:
    """Same bytes, same pixels: in memory as a folder of the files holds them, and a JPEG
    handed to the device decoder as the file's bytes (data.decode=device)."""
    DatasetDict(train=hf_split(tmp_path / "photos", per_class=6)).save_to_disk(tmp_path / "hf")
    kwargs = {"in_memory": True, "augment": {"preset": "cifar"}, "num_workers": 0}
    from_rows = HFDataModule(path=str(tmp_path / "hf"), **kwargs)
    from_files = FolderDataModule(root=str(tmp_path / "photos"), **kwargs)
    from_rows.setup()
    from_files.setup()
    for split in ("train", "val", "test"):
        rows, files = getattr(from_rows.splits, split), getattr(from_files.splits, split)
        assert torch.equal(rows.tensors[0], files.tensors[0]), split
        assert torch.equal(rows.tensors[1], files.tensors[1]), split
    on_device = HFDataModule(path=str(tmp_path / "hf"), decode="device", num_workers=0)
    on_device.setup()
    item, _ = on_device.splits.train[0]
    key = on_device.splits.train.samples[0][0]
    assert isinstance(item, EncodedJPEG)
    assert item.path == key
    row = int(key[len("train[") : -1])
    photo = sorted((tmp_path / "photos").glob("*/*"))[row]
    assert item.data.numpy().tobytes() == photo.read_bytes()
    # a row holding a path (relative to data.root), not bytes: the file read
    rows = {"image": [{"bytes": None, "path": str(photo.relative_to(tmp_path))}], "label": [0]}
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
    monkeypatch.chdir(tmp_path)  # datasets finds the file from here while saving
    Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "paths")
    monkeypatch.chdir(tmp_path / "photos")  # a run started elsewhere
    by_path = HFDataModule(path=str(tmp_path / "paths"), root=str(tmp_path))
    assert torch.equal(ImageReader(by_path.bytes_reader())("train[0]"), read_rgb(photo))


def test_training_on_parquet_files_with_a_test_split_and_folds(make_cfg, tmp_path: Path) -> None:
    data = tmp_path / "parquet"
    hf_split(tmp_path / "photos", per_class=12).to_parquet(str(data / "train-00000.parquet"))
    hf_split(tmp_path / "test", per_class=3).to_parquet(str(data / "test-00000.parquet"))
    cfg = make_cfg(
        "data=hf",
        f"data.path={data}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.folds=3",
        "data.fold=1",
        "data.augment.preset=cifar",
        "data.batch_size=8",
        "data.num_workers=0",
        "model=cifar_quick",
        "trainer.max_epochs=1",
    )
    metrics, objects = train(cfg)
    assert objects["datamodule"].class_names == ["a", "b"]
    assert "test/acc" in metrics
    with open(tmp_path / "run" / "split.csv") as f:
        rows = list(csv.DictReader(f))
    sizes = Counter(row["split"] for row in rows)
    assert sizes == {"train": 16, "val": 8, "test": 6}  # fold 1 of 3 of the 24 train rows
    assert all(r["path"].startswith("test[") for r in rows if r["split"] == "test")
    assert Counter(r["class"] for r in rows if r["split"] == "val") == {"a": 4, "b": 4}


def test_several_labels_per_image_from_a_list_column_of_strings(tmp_path: Path) -> None:
    photos = hf_split(tmp_path / "photos", per_class=4)
    tags = [["cat", "dog"], ["dog"], ["person", "cat"], [], ["cat"], ["dog"], ["person"], ["dog"]]
    table = photos.remove_columns("label").rename_column("image", "photo")
    table = table.add_column("tags", tags).cast(
        Features({"photo": ImageFeature(), "tags": List(Value("string"))})
    )
    table.save_to_disk(tmp_path / "hf")  # a Dataset, not a DatasetDict: the train split
    path = str(tmp_path / "hf")
    with pytest.raises(UserError, match=r"no column of labels of .*photo \(Image\), tags \(List\)"):
        HFDataModule(path=path).split_samples()
    datamodule = HFDataModule(path=path, label_key="tags", multilabel=True)
    rows = dict(datamodule.listed_samples()["train"])
    assert datamodule.class_names == ["cat", "dog", "person"]  # the values, sorted
    assert {key: rows[key].tolist() for key in ("train[0]", "train[1]", "train[2]")} == {
        "train[0]": [1, 1, 0],
        "train[1]": [0, 1, 0],
        "train[2]": [1, 0, 1],
    }
    assert datamodule.bad_rows == [("train[3]", "no label")]
    datamodule = HFDataModule(
        path=path, label_key="tags", multilabel=True, augment={"preset": "cifar"}, num_workers=0
    )
    datamodule.setup()
    _, targets = next(iter(datamodule.train_dataloader()))
    assert targets.shape[1] == 3  # the batch's targets: multi-hot rows
    one_label = HFDataModule(path=path, label_key="tags")
    assert dict(one_label.listed_samples()["train"])["train[6]"] == 2
    assert ("train[0]", "2 labels; several labels per image need model.task=multilabel") in (
        one_label.bad_rows
    )
    # a list of ClassLabels: its names, in its order
    names = ["person", "dog", "cat"]
    table.cast_column("tags", List(ClassLabel(names=names))).save_to_disk(tmp_path / "named")
    named = HFDataModule(path=str(tmp_path / "named"), multilabel=True)  # found by its feature
    assert named.class_names == names
    assert dict(named.listed_samples()["train"])["train[0]"].tolist() == [0, 1, 1]


def test_a_dataset_that_cannot_be_read_is_one_line(tmp_path: Path, monkeypatch) -> None:
    import datasets
    import huggingface_hub

    # offline as the tests run (the libraries read HF_HUB_OFFLINE once, when first imported)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"^data.path=someone/photos cannot be read as a dataset"):
        HFDataModule(path="someone/photos", cache_dir=str(tmp_path)).split_samples()  # offline
    with pytest.raises(UserError, match=r"^data.path=\./nowhere is not a folder"):
        HFDataModule(path="./nowhere").split_samples()
    DatasetDict(train=hf_split(tmp_path / "photos", per_class=1)).save_to_disk(tmp_path / "hf")
    with pytest.raises(UserError, match=r"^data.image_key=label is a column of ClassLabel"):
        HFDataModule(path=str(tmp_path / "hf"), image_key="label").split_samples()
    with pytest.raises(UserError, match=r"^data.label_key=kind is not a column of .*label_key="):
        HFDataModule(path=str(tmp_path / "hf"), label_key="kind").split_samples()


def test_small_photos_are_said_to_be_upscaled_in_rows_as_in_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """40 x 30 photos under the 224 px preset: the same one line from a folder of them and from
    a dataset's rows of them (read through the rows' reader, not as files)."""
    from tests.data_factory import write_class_tree, write_hf_dataset

    folder = write_class_tree(tmp_path / "folder", ["a", "b"], 10)
    sources = {
        "folder": FolderDataModule(root=str(folder), num_workers=0, artifacts_dir=None),
        "hf": HFDataModule(path=str(write_hf_dataset(tmp_path)), num_workers=0),
    }
    for name, data in sources.items():
        caplog.clear()
        with caplog.at_level("WARNING"):
            data.setup()
        said = "The photos are about 30 px on their short side but are cropped to 224 px"
        assert said in caplog.text, name
