"""Any image-folder tree (`data=folder data.root=DIR`), in one of two layouts:

- DIR/train/<class>/*.jpg, optionally DIR/val/<class>/ and DIR/test/<class>/: missing splits are
  carved from train;
- DIR/<class>/*.jpg only: split into train/val/test by `split` (default 0.7/0.2/0.1).

Carving is stratified by class and fixed by `split_seed`; with `folds=K fold=i` the validation
split is fold i of k-fold cross-validation over train (and val, if given), the test split
unchanged. The resulting split is saved as `split.csv` in the run dir. Class names are the
folder names, sorted; folders with no image are left out with a warning.
"""

import contextlib
import csv
import statistics
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, TensorDataset

from imgcls.data.augmentation.presets import resize_center_crop
from imgcls.data.datamodule import ImageDataModule, Splits
from imgcls.data.decoding.device import collate_encoded
from imgcls.data.decoding.images import BadImageError, parse_header
from imgcls.data.loaders import auto_workers
from imgcls.data.sources.decode_place import DecodePlaceChoice
from imgcls.data.sources.files import (
    PATH_TEXT,
    ImageFileDataset,
    ImageReader,
    Sample,
    class_folders,
    fold_split,
    label_classes,
    list_images,
    read_file_bytes,
    scan_samples,
    stratified_split,
    stratum,
)
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)
SPLIT_NAMES = ("train", "val", "test")
LAYOUTS = (
    "DIR/train/<class>/<image> (optionally DIR/val/<class>/..., DIR/test/<class>/...), "
    "or DIR/<class>/<image>"
)


class FolderDataModule(DecodePlaceChoice, ImageDataModule):
    #: what a user is told the source expects, after a mistake
    expected = f"Expected {LAYOUTS}."

    def __init__(
        self,
        root: str,
        split: tuple[float, float, float] = (0.7, 0.2, 0.1),
        split_seed: int = 0,
        folds: int | None = None,
        fold: int = 0,
        in_memory: bool = False,
        on_bad_image: str = "skip",
        artifacts_dir: str | None = None,
        decode: str = "cpu",
        **loader_kwargs,
    ) -> None:
        super().__init__(**loader_kwargs)
        self.choose_decode_place(decode)
        self.root = Path(root).expanduser()
        self.split = tuple(split)
        self.split_seed = split_seed
        self.folds, self.fold = folds, fold
        self.in_memory = in_memory
        self.on_bad_image = on_bad_image
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else None
        # folder links that lead back into the tree, passed over: {link: target}
        self.skipped_links: dict[str, str] = {}

    # -- layout ----------------------------------------------------------------------------
    def split_dirs(self) -> dict[str, Path | None]:
        """The folder of each split, None where it is to be carved from train."""
        if not self.root.is_dir():
            raise UserError(f"data.root={self.root} is not a directory. Expected {LAYOUTS}.")
        if (self.root / "train").is_dir():
            return {s: self.root / s if (self.root / s).is_dir() else None for s in SPLIT_NAMES}
        return {"train": self.root, "val": None, "test": None}

    @cached_property
    def _train_images(self) -> dict[str, list[Path]]:
        """The train folder's images by class, for classes that have any. Listed once: the
        class list and the train split both come from it."""
        train_dir = self.split_dirs()["train"]
        listing = {
            name: list_images(train_dir / name, train_dir, self.skipped_links)
            for name in class_folders(train_dir)
        }
        for empty in sorted(name for name, images in listing.items() if not images):
            log.warning(f"Class folder {train_dir / empty} has no images: left out.")
        kept = {name: images for name, images in listing.items() if images}
        if not kept:
            raise UserError(f"No class folders with images under {train_dir}. Expected {LAYOUTS}.")
        if len(kept) == 1:
            raise UserError(
                f"data.root={self.root} has one class folder with images ({next(iter(kept))}): "
                f"a classifier needs two or more. Expected {LAYOUTS}."
            )
        return kept

    @property
    def class_dirs(self) -> list[str]:
        """Sub-folders of the train folder that hold at least one image, sorted."""
        return list(self._train_images)

    @property
    def class_names(self) -> list[str]:
        return self.class_dirs

    # -- splits ----------------------------------------------------------------------------
    def split_samples(self) -> dict[str, list[Sample]]:
        """Every split's (path, label) samples: the splits the source lists, the rest carved."""
        samples = self.listed_samples()
        # with folds, validation is a fold of train (and of a listed val split, pooled with it)
        missing = [s for s in SPLIT_NAMES if s not in samples and not (self.folds and s == "val")]
        if missing:
            train = samples["train"]
            fractions = self.carved_fractions(missing, len(train))
            strata = [stratum(label) for _, label in train]
            parts = stratified_split(strata, fractions, self.split_seed)
            for name, part in zip(("train", *missing), parts, strict=True):
                samples[name] = [train[i] for i in part]
        if self.folds:  # a val split that is also the test split (ImageNet's) stays out
            val = samples.get("val", [])
            pool = samples["train"] + (val if val is not samples.get("test") else [])
            strata = [stratum(label) for _, label in pool]
            parts = fold_split(strata, self.folds, self.fold, self.split_seed)
            samples["train"], samples["val"] = ([pool[i] for i in part] for part in parts)
        if missing or self.folds:
            self.save_split(samples)
        for name, found in samples.items():
            if not found:
                raise UserError(f"The {name} split of {self.root} has no images. {self.expected}")
        self._warn_of_classes_missing_from(samples)
        return samples

    def carved_fractions(self, missing: list[str], train_images: int) -> list[float]:
        """The shares of the train folder's `train_images` that stay in train and go to each
        `missing` split: `data.split`'s (with folds, validation's share stays in the pool)."""
        fractions = [self.split[SPLIT_NAMES.index(s)] for s in ("train", *missing)]
        if self.folds:
            fractions[0] += self.split[1]
        return fractions

    def listed_samples(self) -> dict[str, list[Sample]]:
        """The samples of the splits that have folders of their own."""
        dirs = self.split_dirs()
        train = [
            (str(path), label)
            for label, images in enumerate(self._train_images.values())
            for path in images
        ]
        listed: dict[Path, list[Sample]] = {dirs["train"]: train}
        samples = {}
        for name, folder in dirs.items():
            if folder is not None:  # each folder is listed once (ImageNet's val is also test)
                if folder not in listed:
                    listed[folder] = scan_samples(folder, self.class_dirs, self.skipped_links)
                samples[name] = listed[folder]
        return samples

    def layout_problems(self) -> list[tuple[str, str]]:
        """(path, reason) for what the layout holds that training leaves out: class folders
        without images (imgcls-verify lists them)."""
        dirs = {d for d in self.split_dirs().values() if d is not None}
        return [
            (str(d / name), "class folder has no images")
            for d in sorted(dirs)
            for name in sorted(set(class_folders(d)) - set(self.class_dirs))
        ]

    def _warn_of_classes_missing_from(self, samples: dict[str, list[Sample]]) -> None:
        """A class with too few images to carve into every split is in train only: say so."""
        for name in SPLIT_NAMES[1:]:
            present = {c for _, label in samples[name] for c in label_classes(label)}
            lacking = [c for i, c in enumerate(self.class_names) if i not in present]
            if lacking:
                listed = ", ".join(lacking[:5]) + (", ..." if len(lacking) > 5 else "")
                log.warning(
                    f"The {name} split has no image of {len(lacking)} class(es) ({listed}): "
                    f"too few images; its metrics say nothing of them."
                )

    def bytes_reader(self) -> Callable[[str], bytes]:
        """What reads a sample's encoded image: its file here (a row, for data=hf)."""
        return read_file_bytes

    def _warn_if_upscaled(self, samples: list[Sample]) -> None:
        """Photos far smaller than the crops (CIFAR-sized files under a 224 px preset) are
        upscaled at great cost and to no gain: say so, and what to set."""
        sides, read = [], self.bytes_reader()
        for path, _ in samples[:: max(1, len(samples) // 16)][:16]:
            with contextlib.suppress(BadImageError, OSError):
                sides.append(min(parse_header(read(path)).size))
        crop = self.pipeline.train_crop
        if sides and statistics.median(sides) * 2 <= crop:
            side = int(statistics.median(sides))
            log.warning(
                f"The photos are about {side} px on their short side but are cropped to {crop} px: "
                f"upscaled 4x or more in area. For small images set data.train_crop={side} "
                f"data.eval_resize={side} data.eval_crop={side} (and data.in_memory=true)."
            )

    @rank_zero_only
    def save_split(self, samples: dict[str, list[Sample]]) -> None:
        if self.artifacts_dir is None:
            return
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        with open(self.artifacts_dir / "split.csv", "w", newline="", **PATH_TEXT) as f:
            writer = csv.writer(f)
            writer.writerow(["split", "path", "label", "class"])
            for name in SPLIT_NAMES:
                for path, label in samples[name]:
                    classes = label_classes(label)  # several, ";"-separated, for multi-label
                    names = ";".join(self.class_names[c] for c in classes)
                    writer.writerow([name, path, ";".join(map(str, classes)), names])

    @property
    def bad_images_file(self) -> Path | None:
        return self.artifacts_dir / "bad_images.txt" if self.artifacts_dir else None

    def _dataset(self, samples: list[Sample], transform, min_side: int) -> ImageFileDataset:
        """The samples read by the source's `bytes_reader` (files here, rows for data=hf)."""
        reader = ImageReader(self.bytes_reader(), on_device=self.decodes_on_device())
        if reader.on_device:  # workers read bytes; the device decodes and crops
            return ImageFileDataset(
                samples,
                on_bad_image=self.on_bad_image,
                bad_images_file=self.bad_images_file,
                reader=reader,
                collate_fn=collate_encoded,
            )
        return ImageFileDataset(
            samples,
            transform=transform,
            min_side=min_side,
            on_bad_image=self.on_bad_image,
            bad_images_file=self.bad_images_file,
            reader=reader,
        )

    def _load_into_memory(self, samples: list[Sample]) -> TensorDataset:
        """Decode every image once, at the eval resize, into one uint8 tensor."""
        size = self.pipeline.eval_resize
        dataset = self._dataset(samples, resize_center_crop(size, size), min_side=size)
        workers = auto_workers() if self.num_workers == "auto" else int(self.num_workers)
        batches = list(DataLoader(dataset, batch_size=256, num_workers=workers))
        images = torch.cat([b[0] for b in batches])
        labels = torch.cat([b[1] for b in batches])
        return TensorDataset(images, labels)

    def build_splits(self) -> Splits:
        samples = self.split_samples()
        if self.in_memory:
            return Splits(*(self._load_into_memory(samples[s]) for s in SPLIT_NAMES))
        pipeline = self.pipeline
        self._warn_if_upscaled(samples["train"])
        return Splits(
            self._dataset(samples["train"], pipeline.train_worker, pipeline.train_crop),
            self._dataset(samples["val"], pipeline.eval_worker, pipeline.eval_resize),
            self._dataset(samples["test"], pipeline.eval_worker, pipeline.eval_resize),
        )

    def teardown(self, stage: str) -> None:
        report_bad_images(self.bad_images_file)


@rank_zero_only
def report_bad_images(listing: Path | None) -> None:
    if listing is None or not listing.is_file():
        return
    lines = listing.read_text(**PATH_TEXT).splitlines()
    paths = {line.split("\t", 1)[0] for line in lines if line}
    log.warning(f"Skipped {len(paths)} bad image file(s); they are listed in {listing}.")
