"""A Hugging Face dataset read in place (`data=hf data.path=DIR|user/name`) through the datasets
library: a DatasetDict (or a Dataset) saved with `save_to_disk`, a folder of parquet or arrow
files (split by their names, as `load_dataset` splits them), or a dataset on the Hub (when
online; one line when not).

The image column is the one of the `Image` feature (or `data.image_key`), the label column the
one of the `ClassLabel` feature, or a list of them (or `data.label_key`, else a column named
label or labels). Class names are the ClassLabel's names, else the train split's distinct label
values, sorted. A list column gives several labels per image (`model.task=multilabel`), as a
CSV's does. The dataset's own splits are used (train; validation, valid, val or dev; test), a
split with no label at all (a competition's test split) is left out, and splits missing are
carved from train as for folders (`split`, `split_seed`, `folds`: FolderDataModule's).

Images stay as the bytes the dataset holds (memory-mapped Arrow, never decoded by datasets) and
are decoded as image files are, in the loader workers or on the device (`data.decode`), or once
into memory (`data.in_memory`): the same preprocessing as for a folder of the same photos. A row
without a label, or with a label not among the classes, is left out and listed in bad_rows.txt;
a row whose image cannot be decoded is skipped and listed in bad_images.txt as a bad file is
(`imgcls-verify data=hf ...` lists both). A sample's "path" is its row, `<split>[<index>]`.
"""

from functools import cached_property
from pathlib import Path
from typing import Any

from imgcls.data.decoding.images import BadImageError
from imgcls.data.sources.files import (
    Sample,
    label_problem,
    report_bad_rows,
    row_label,
)
from imgcls.data.sources.folder import FolderDataModule
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)
# the names datasets give each split, in the order one is preferred where several are there
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}
LABEL_NAMES = ("label", "labels")
# what marks a saved dataset: a DatasetDict's and a single Dataset's save_to_disk files
SAVED_DICT, SAVED_DATASET = "dataset_dict.json", "state.json"
# how a path that can only be a folder on this machine (not a Hub id) begins
LOCAL_STARTS = ("/", "./", "../", "~")
# the files of a dataset's tables, at the top of a folder or in data/ as the Hub lays them out
TABLE_SUFFIXES = {".parquet", ".arrow"}


def is_saved(folder: Path) -> bool:
    """Whether `folder` holds a DatasetDict or a Dataset written with save_to_disk."""
    return (folder / SAVED_DICT).is_file() or (folder / SAVED_DATASET).is_file()


def is_dataset_folder(folder: Path) -> bool:
    """Whether `folder` is a Hugging Face dataset: saved with save_to_disk, or parquet or arrow
    files (only its top and data/ are looked at: a photo tree may be huge)."""
    if is_saved(folder):
        return True
    tables = [part for part in (folder, folder / "data") if part.is_dir()]
    return any(p.suffix in TABLE_SUFFIXES for part in tables for p in part.iterdir())


def row_key(split: str, index: int) -> str:
    return f"{split}[{index}]"


class RowReader:
    """A row's image as a file's bytes (an ImageReader's `read` whose keys are row keys), from
    each split's image column alone, without datasets' own decoding; picklable for loader
    workers (the Arrow files are memory-mapped)."""

    def __init__(self, columns: dict[str, Any], root: Path | None) -> None:
        self.columns, self.root = columns, root

    def fingerprint(self) -> str:
        """What the image columns hold, as the datasets library hashes each split's content and
        the transforms made of it (stable across processes), and where row paths start: the
        name a probe's cached features are kept under (data/features.py)."""
        splits = ", ".join(f"{name}={split._fingerprint}" for name, split in self.columns.items())
        return f"{splits}; root={self.root}"

    def __call__(self, key: str) -> bytes:
        split, _, index = key[:-1].rpartition("[")
        item = next(iter(self.columns[split][int(index)].values()))
        if isinstance(item, dict):  # the Image feature: the file's bytes, or only its path
            if item.get("bytes") is None and item.get("path"):  # an absolute path stays one
                return ((self.root or Path()) / item["path"]).read_bytes()
            item = item.get("bytes")
        if item is None:
            raise BadImageError("the row has no image")
        return bytes(item)


class HFDataModule(FolderDataModule):
    supports_multilabel = True
    expected = (
        "Expected a dataset saved with save_to_disk, a folder of parquet or arrow files, or a "
        "Hub id (user/name)."
    )

    def __init__(
        self,
        path: str,
        image_key: str | None = None,
        label_key: str | None = None,
        cache_dir: str | None = None,
        root: str | None = None,
        **kwargs,
    ) -> None:
        """`image_key`, `label_key`: the columns (default: found by their features);
        `cache_dir`: where `load_dataset` keeps its Arrow copy of parquet files or a Hub
        dataset (default: datasets' own cache); `root`: where image paths that rows hold
        instead of bytes start, when relative (default: the folder `path` names)."""
        super().__init__(root=path, **kwargs)
        self.path, self.image_key, self.label_key = path, image_key, label_key
        self.cache_dir = cache_dir
        local = Path(path).expanduser()
        self.files_root = Path(root).expanduser() if root else (local if local.is_dir() else None)
        self.bad_rows: list[tuple[str, str]] = []

    # -- the dataset -----------------------------------------------------------------------
    @cached_property
    def _loaded(self) -> dict[str, Any]:
        """The dataset's splits by their own names."""
        import datasets

        local = Path(self.path).expanduser()
        if local.is_file() or (not local.exists() and self.path.startswith(LOCAL_STARTS)):
            raise UserError(f"data.path={self.path} is not a folder. {self.expected}")
        try:
            if is_saved(local):
                loaded = datasets.load_from_disk(str(local))
            else:  # parquet or arrow files (split by their names), or a Hub id
                where = str(local) if local.is_dir() else self.path
                loaded = datasets.load_dataset(where, cache_dir=self.cache_dir)
        except (OSError, ValueError) as err:  # the Hub unreachable, no such dataset, no files
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(
                f"data.path={self.path} cannot be read as a dataset ({reason}). {self.expected}"
            ) from err
        return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}

    @cached_property
    def _roles(self) -> dict[str, str]:
        """{train/val/test: the dataset's own name for that split}, for the splits it has."""
        loaded = self._loaded
        roles = {
            role: next(name for name in aliases if name in loaded)
            for role, aliases in SPLIT_ALIASES.items()
            if any(name in loaded for name in aliases)
        }
        if "train" not in roles and len(loaded) == 1:
            roles["train"] = next(iter(loaded))  # one split, whatever its name: the data
        if "train" not in roles:
            raise UserError(
                f"data.path={self.path} has the splits {', '.join(loaded)}: none is a train "
                f"split ({', '.join(SPLIT_ALIASES['train'])})."
            )
        ignored = sorted(set(loaded) - set(roles.values()))
        if ignored:
            log.info(f"Splits of {self.path} not used: {', '.join(ignored)}")
        return roles

    @cached_property
    def columns(self) -> tuple[str, str]:
        """(image column, label column), named or found by their features in the train split."""
        import datasets

        features = self._loaded[self._roles["train"]].features
        listed = ", ".join(f"{name} ({type(f).__name__})" for name, f in features.items())
        image = self.image_key or next(
            (name for name, f in features.items() if isinstance(f, datasets.Image)), None
        )
        label = self.label_key or next(
            (name for name, f in features.items() if isinstance(_inner(f), datasets.ClassLabel)),
            next((name for name in LABEL_NAMES if name in features), None),
        )
        for key, found, what in (("image_key", image, "images"), ("label_key", label, "labels")):
            if found is None or found not in features:
                given = f"data.{key}={found} is not a column" if found else f"no column of {what}"
                raise UserError(
                    f"{given} of {self.path}: its columns are {listed}. Set data.{key}=COLUMN."
                )
        feature = features[image]
        if not isinstance(feature, datasets.Image) and getattr(feature, "dtype", None) not in (
            "binary",
            "large_binary",
        ):
            raise UserError(
                f"data.image_key={image} is a column of {type(feature).__name__}, not of images "
                f"(the Image feature, or bytes): the columns of {self.path} are {listed}."
            )
        return image, label

    @cached_property
    def _label_feature(self) -> Any:
        return self._loaded[self._roles["train"]].features[self.columns[1]]

    @cached_property
    def _label_rows(self) -> dict[str, list[list[Any]]]:
        """Every used split's rows' labels, each a list of distinct values (none, one or
        several), read from the label column alone; a ClassLabel's -1 (datasets' "no label") is
        none."""
        import datasets

        label = self.columns[1]
        class_label = isinstance(_inner(self._label_feature), datasets.ClassLabel)
        none = (None, "", -1) if class_label else (None, "")
        rows: dict[str, list[list[Any]]] = {}
        for name in self._roles.values():
            column = self._loaded[name].with_format("arrow", columns=[label])[:][label]
            rows[name] = [
                list(dict.fromkeys(v for v in (x if isinstance(x, list) else [x]) if v not in none))
                for x in column.to_pylist()
            ]
        return rows

    @cached_property
    def _classes(self) -> tuple[list[str], dict[Any, int]]:
        """(class names, {label value: class index})."""
        import datasets

        inner = _inner(self._label_feature)
        if isinstance(inner, datasets.ClassLabel):
            return list(inner.names), {i: i for i in range(inner.num_classes)}
        values = sorted({v for row in self._label_rows[self._roles["train"]] for v in row})
        if len(values) < 2:
            raise UserError(
                f"The train split of {self.path} has {len(values)} distinct label(s) in its "
                f"column {self.columns[1]}: a classifier needs two or more."
            )
        return [str(v) for v in values], {v: i for i, v in enumerate(values)}

    @property
    def class_names(self) -> list[str]:
        return self._classes[0]

    # -- splits ----------------------------------------------------------------------------
    def listed_samples(self) -> dict[str, list[Sample]]:
        """The samples of the splits the dataset has; rows without a usable label reported and
        left out, splits with no label at all left to be carved."""
        index = self._classes[1]
        among = f"the {len(index)} classes"
        samples: dict[str, list[Sample]] = {}
        self.bad_rows = []
        for role, name in self._roles.items():
            rows = self._label_rows[name]
            if role != "train" and not any(rows):
                log.warning(f"The {name} split of {self.path} has no labels: carved from train.")
                continue
            found = samples.setdefault(role, [])
            for i, labels in enumerate(rows):
                problem = label_problem(labels, index, self.multilabel, among)
                if problem:
                    self.bad_rows.append((row_key(name, i), problem))
                else:
                    label = row_label([index[v] for v in labels], len(index), self.multilabel)
                    found.append((row_key(name, i), label))
        report_bad_rows(self.bad_rows, self.path, self.artifacts_dir)
        if not samples["train"]:
            raise UserError(f"The train split of {self.path} has no usable row. {self.expected}")
        return samples

    def layout_problems(self) -> list[tuple[str, str]]:
        """The rows left out (call after `split_samples`)."""
        return list(self.bad_rows)

    def bytes_reader(self) -> RowReader:
        """What reads the rows' images: each used split's image column, undecoded."""
        import datasets

        image = self.columns[0]
        columns = {}
        for name in self._roles.values():
            split = self._loaded[name].select_columns([image])
            if isinstance(split.features[image], datasets.Image):
                split = split.cast_column(image, datasets.Image(decode=False))
            columns[name] = split
        return RowReader(columns, self.files_root)


def _inner(feature: Any) -> Any:
    """A list feature's item feature (List(ClassLabel): the ClassLabel); any other, itself."""
    return getattr(feature, "feature", feature)
