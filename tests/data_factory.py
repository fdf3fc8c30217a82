"""Tiny datasets written to disk in the layouts real ones use, for tests."""

import io
import os
import pickle
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

from imgcls.models.pretrained import torchvision_weights
from imgcls.run.compose import compose_config
from imgcls.train import train

PALETTE = (
    (220, 40, 40),
    (40, 200, 40),
    (40, 40, 220),
    (220, 220, 40),
    (40, 220, 220),
    (200, 40, 200),
)
IMAGENET_WNIDS = ("n01440764", "n01443537", "n01484850")  # tench, goldfish, great white shark


def write_cifar(
    root: Path, num_classes: int = 10, per_class: int = 6, test_per_class: int = 2
) -> Path:
    """CIFAR-10/100 python-format batches with random pixels; class c's images are all ~c*20."""
    dataset = CIFAR10 if num_classes == 10 else CIFAR100
    folder = root / dataset.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if num_classes == 10 else "fine_labels"
    rng = np.random.default_rng(0)

    def batch(per: int) -> dict:
        labels = np.repeat(np.arange(num_classes), per)
        data = rng.integers(0, 30, (len(labels), 3072)) + (labels[:, None] * 20 % 220)
        return {"data": data.astype(np.uint8), label_key: labels.tolist()}

    train_files = [name for name, _ in dataset.train_list]
    for name in train_files:  # every training batch holds per_class/len(files) of each class
        (folder / name).write_bytes(pickle.dumps(batch(per_class // len(train_files) or 1)))
    for name, _ in dataset.test_list:
        (folder / name).write_bytes(pickle.dumps(batch(test_per_class)))
    names = [f"class{c}" for c in range(num_classes)]
    meta_key = dataset.meta["key"]
    (folder / dataset.meta["filename"]).write_bytes(pickle.dumps({meta_key: names}))
    return root


@pytest.fixture
def fake_cifar_integrity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our tiny batches have other checksums than the real ones: accept them."""
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args: True)


def write_image(path: Path, color: Sequence[int], size: tuple[int, int] = (40, 30), **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # the same noise in every process and every tmp dir: a run's data, and so its numbers, do
    # not depend on where pytest put it (a tmp path in the seed made one run diverge in CI)
    rng = np.random.default_rng(zlib.crc32(os.fsencode(Path(*path.parts[-3:]))))
    pixels = np.clip(np.array(color) + rng.integers(-10, 10, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path, **kw)
    return path


_Y, _X = np.mgrid[0:300, 0:400]
# a smooth 400 x 300 photo-like gradient: resampling it is well defined, so crops compare closely
SMOOTH = np.stack([_X * 0.6, _Y * 0.8, 255 - _X * 0.3 - _Y * 0.2], axis=2).astype(np.uint8)


def write_photo_kinds(folder: Path, size: tuple[int, int] | None = None) -> dict[str, Path]:
    """The kinds of file a photo folder holds and the device decoder treats apart: a plain
    JPEG, grayscale, progressive, CMYK, EXIF-rotated, a PNG, and a JPEG cut short."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(SMOOTH)
    if size is not None:
        rgb = rgb.resize(size)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored landscape, shown portrait
    kinds = {
        "plain.jpg": (rgb, {}),
        "grey.jpg": (rgb.convert("L"), {}),
        "progressive.jpg": (rgb, {"progressive": True}),
        "cmyk.jpg": (rgb.convert("CMYK"), {}),
        "rotated.jpg": (rgb, {"exif": exif}),
        "photo.png": (rgb, {}),
    }
    made = {}
    for name, (image, options) in kinds.items():
        image.save(folder / name, **options)
        made[name] = folder / name
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG")
    made["truncated.jpg"] = folder / "truncated.jpg"
    made["truncated.jpg"].write_bytes(buffer.getvalue()[:2000])
    return made


def write_class_tree(
    root: Path, classes: Sequence[str], per_class: int, suffix: str = ".jpg"
) -> Path:
    """root/<class>/<i><suffix>, each class its own colour so a net can tell them apart."""
    for c, name in enumerate(classes):
        colour = PALETTE[c % len(PALETTE)]
        for i in range(per_class):
            write_image(root / name / f"{i:03d}{suffix}", colour)
    return root


def write_imagenet(root: Path, train_per_class: int = 4, val_per_class: int = 2) -> Path:
    write_class_tree(root / "train", IMAGENET_WNIDS, train_per_class, ".JPEG")
    write_class_tree(root / "val", IMAGENET_WNIDS, val_per_class, ".JPEG")
    return root


def cache_torchvision_weights(name: str, weights: str = "DEFAULT") -> Path:
    """A stand-in for torchvision's pretrained file, where torchvision looks before downloading
    (random weights of the right shapes: tests check wiring, not ImageNet features)."""
    entry = torchvision_weights(name, weights)
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(entry.url).name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        net = torchvision.models.get_model(name, num_classes=len(entry.meta["categories"]))
        torch.save(net.state_dict(), path)
    return path


# the classes of the trained_folder checkpoint
FOLDER_CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="session")
def trained_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.ckpt of a torchvision ResNet-18 trained briefly on a 3-class folder of 48 px photos,
    with a fitted temperature (predict and export start from it)."""
    tmp = tmp_path_factory.mktemp("trained")
    root = write_class_tree(tmp / "photos", FOLDER_CLASSES, 16)
    overrides = [
        f"paths.log_dir={tmp / 'logs'}",
        "extras.print_config=false",
        "++callbacks.rich_progress_bar=null",
        "data=folder",
        f"data.root={root}",
        "data.num_workers=0",
        "data.batch_size=16",
        "data.train_crop=48",
        "data.eval_resize=52",
        "data.eval_crop=48",
        "model=resnet18",
        "optimizer=adamw",
        "optimizer.lr=1e-3",
        "trainer.max_epochs=3",
        "model.temperature=fit",
    ]
    train(compose_config("train", overrides, output_dir=tmp / "run"))
    return tmp / "run" / "checkpoints" / "best.ckpt"


# files a photo folder may hold that are not images (photo_tree puts them in a class folder)
BAD = {"empty.jpg": b"", "html.jpg": b"<html></html>", "cut.png": b"\x89PNG\r\n\x1a\n\0\0"}


def photo_tree(root: Path) -> Path:
    write_class_tree(root, ["red", "green", "blue"], per_class=30)
    for name, content in BAD.items():
        (root / "green" / name).write_bytes(content)
    (root / "blue" / ".DS_Store").write_bytes(b"\0")
    (root / "empty_class").mkdir()
    return root


def write_mosaics(
    photos: Path,
    out: Path,
    classes: Sequence[str],
    counts: dict[str, int],
    tile: int = 32,
    seed: int = 0,
) -> Path:
    """2x2 mosaics of photos from `photos/<split>/<class>/` (CIFAR-10's JPEG copy), each of one
    or two classes and labelled with the classes its tiles show, and `labels.csv` listing them
    with their split (counts: mosaics per split; val and test tiles come from the photos' test
    folder); `tile`: its side in px (the photos are resized to it)."""
    rng = np.random.default_rng(seed)
    pools = {
        source: {c: sorted((photos / source / c).iterdir()) for c in classes}
        for source in ("train", "test")
    }
    out.mkdir(parents=True, exist_ok=True)
    rows = ["path,labels,split"]
    for split, count in counts.items():
        pool = pools["train" if split == "train" else "test"]
        for i in range(count):
            shown = rng.choice(len(classes), size=rng.integers(1, 3), replace=False)
            tiles = np.concatenate([shown, rng.choice(shown, size=4 - len(shown))])
            rng.shuffle(tiles)
            canvas = Image.new("RGB", (2 * tile, 2 * tile))
            for t, c in enumerate(tiles):
                files = pool[classes[c]]
                photo = Image.open(files[rng.integers(len(files))]).convert("RGB")
                canvas.paste(photo.resize((tile, tile)), (tile * (t % 2), tile * (t // 2)))
            name = f"{split}/{i:04d}.png"
            (out / split).mkdir(exist_ok=True)
            canvas.save(out / name)
            labels = ";".join(sorted({classes[c] for c in tiles}))
            rows.append(f"{name},{labels},{split}")
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    return out / "labels.csv"


def write_label_csv(root: Path, per_class: int = 20) -> Path:
    """Three colours of image, listed in labels.csv with one or two labels each (every other
    image is also a "person"), no split column."""
    write_class_tree(root, ["cat", "dog", "person"], per_class)
    rows = ["path,labels"]
    for name in ("cat", "dog", "person"):
        for i in range(per_class):
            extra = ";person" if i % 2 and name != "person" else ""
            rows.append(f"{name}/{i:03d}.jpg,{name}{extra}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def write_shard_set(root: Path, classes: Sequence[str] = ("a", "b"), per_class: int = 10) -> Path:
    """root/shards: a class tree of photos written as LitData shards (data=shards)."""
    from imgcls.data.sources.folder import FolderDataModule
    from imgcls.data.sources.shards import write_shards

    photos = write_class_tree(root / "photos", classes, per_class)
    source = FolderDataModule(root=str(photos), artifacts_dir=str(root / "shards"))
    samples, names = source.split_samples(), source.class_names
    write_shards(samples, names, False, photos, root / "shards", workers=1)
    return root / "shards"


def hf_split(
    photos: Path,
    classes: Sequence[str] = ("a", "b"),
    per_class: int = 10,
    extra: Sequence[tuple[bytes | None, int]] = (),
    names: Sequence[str] | None = None,
):
    """A Hugging Face Dataset of a class tree's photos (written to `photos`): an Image column
    holding the files' bytes and a ClassLabel column (of `names`, default `classes`), then the
    `extra` rows (image bytes or None, label index or -1)."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    names = list(names or classes)
    files = sorted(write_class_tree(photos, classes, per_class).glob("*/*"))
    rows = [(f.read_bytes(), names.index(f.parent.name)) for f in files] + list(extra)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
    images = [None if data is None else {"bytes": data, "path": None} for data, _ in rows]
    return Dataset.from_dict({"image": images, "label": [y for _, y in rows]}, features=features)


def write_hf_dataset(root: Path, **split) -> Path:
    """root/hf: `hf_split`'s dataset (of the photos in root/photos) as the train split of a
    DatasetDict saved with save_to_disk (data=hf)."""
    from datasets import DatasetDict

    DatasetDict(train=hf_split(root / "photos", **split)).save_to_disk(root / "hf")
    return root / "hf"


def teacher_checkpoint(path: Path, net: str = "cifar_quick", seed: int = 0) -> Path:
    """An untrained classifier of the digits' classes and normalization, saved as our checkpoint:
    a teacher for distillation (its predictions matter less than its wiring)."""
    from imgcls.models.classifier import ImageClassifier

    torch.manual_seed(seed)
    contract = {"resize": 32, "crop": 32, "mean": [0.305] * 3, "std": [0.323] * 3}
    model = ImageClassifier(
        net={"name": net},
        num_classes=10,
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
        class_names=[str(d) for d in range(10)],
        preprocessing=contract,
    )
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path
