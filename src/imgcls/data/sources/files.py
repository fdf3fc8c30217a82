"""Image files on disk: finding them in class folders, reading them, splitting them.

Hidden files (.DS_Store, ._photo.jpg) and files without an image suffix are not images and are
passed over; suffixes match in any case (.JPG). Empty files and unreadable images are "bad":
with `on_bad_image="skip"` each is logged, listed in `bad_images.txt` and replaced by the next
readable image, so a bad file met in epoch 37 costs one line in a log, not the run; with
"error" the first one stops the run, naming the file.
"""

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import Dataset

from imgcls.data.decoding.device import EncodedJPEG, for_device
from imgcls.data.decoding.images import IMAGE_SUFFIXES, BadImageError, decode_any, parse_header
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.paths import PATH_TEXT, shown

log = get_logger(__name__)
BAD_POLICIES = ("skip", "error")
# bad rows of a listing shown one line each on the console (all of them are in bad_rows.txt)
SHOWN_BAD_ROWS = 20
BAD_ROWS_FILE = "bad_rows.txt"  # in the run dir (imgcls-prepare: in DST)


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def class_folders(root: Path) -> list[str]:
    """The sorted names of the visible sub-folders of root: one class each."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def read_file_bytes(path: str) -> bytes:
    """A sample's encoded image, its path naming a file (a module-level function: worker
    processes take it pickled)."""
    return Path(path).read_bytes()


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def list_images(
    folder: Path, tree: Path | None = None, skipped_links: dict[str, str] | None = None
) -> list[Path]:
    """Every image file below folder (recursively), in a stable order.

    Links to folders are followed only where they lead out of `tree` (the dataset's folder,
    by default folder's parent): a link back into it is a loop (`loop -> .`), a way into
    another class's images (`up -> ..`) or a second path to files listed anyway, and is skipped
    with a warning, and added to `skipped_links` ({link: target}) when given.
    """
    tree_real = os.path.realpath(tree if tree is not None else Path(folder).parent)
    found, visited, pending = [], {os.path.realpath(folder)}, [str(folder)]
    while pending:
        for entry in os.scandir(pending.pop()):
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                if is_image_name(entry.name) and entry.is_file():
                    found.append(Path(entry.path))
                continue
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if _within(target, tree_real) or _within(tree_real, target) or target in visited:
                    if skipped_links is not None:
                        skipped_links[entry.path] = target
                    log.warning(
                        f"Skipped the folder link {shown(entry.path)} -> {shown(target)}: it "
                        "leads back into the dataset (a loop, another class's folder or files "
                        "listed already)."
                    )
                    continue
                visited.add(target)
            pending.append(entry.path)
    return sorted(found)


def scan_samples(
    root: Path, classes: Sequence[str], skipped_links: dict[str, str] | None = None
) -> list[tuple[str, int]]:
    """(path, label) for every image in root/<class>/ for the given classes."""
    samples = []
    for label, name in enumerate(classes):
        if (root / name).is_dir():
            images = list_images(root / name, root, skipped_links)
            samples += [(str(p), label) for p in images]
    return samples


def stratified_split(
    labels: Sequence[int], fractions: Sequence[float], seed: int
) -> list[list[int]]:
    """Split indices into len(fractions) parts, each class divided in the same proportions,
    reproducibly for a given seed (the first part takes what rounding leaves over). A part with
    a fraction above 0 that rounding left empty gets one image from the first part, so a small
    dataset still has every split it asks for."""
    total = sum(fractions)
    parts: list[list[int]] = [[] for _ in fractions]
    firsts: dict[int, list[int]] = {}  # each class's share of the first part, in seeded order
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    for label in sorted(by_class):
        members = by_class[label]
        order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        counts = [round(len(members) * f / total) for f in fractions[1:]]
        start = len(members) - sum(counts)
        firsts[label] = order[:start]
        for part, count in zip(parts[1:], counts, strict=True):
            part += order[start : start + count]
            start += count
    for part, fraction in zip(parts[1:], fractions[1:], strict=True):
        donor = max(firsts, key=lambda label: len(firsts[label]), default=None)
        if not part and fraction > 0 and donor is not None and len(firsts[donor]) > 1:
            part.append(firsts[donor].pop())
    parts[0] = [index for label in sorted(firsts) for index in firsts[label]]
    return [sorted(p) for p in parts]


# (path, label): a class index, or a multi-hot row for several labels per image
Sample = tuple[str, "int | torch.Tensor"]


def label_classes(label: int | torch.Tensor) -> list[int]:
    """The classes a label names: its index, or a multi-hot row's positives."""
    if isinstance(label, torch.Tensor):
        return label.nonzero().flatten().tolist()
    return [label]


def stratum(label: int | torch.Tensor) -> int:
    """The class a split is stratified by: the label, or a multi-hot row's first positive."""
    return int(label.argmax()) if isinstance(label, torch.Tensor) else label


def fold_split(
    labels: Sequence[int], folds: int, fold: int, seed: int
) -> tuple[list[int], list[int]]:
    """(train, val) indices of k-fold cross-validation: the images are dealt into `folds` parts,
    each class in seeded order and spread evenly over them (stratified); part `fold` is the
    validation split, the rest the training split. The same (labels, folds, seed) give the same
    parts for every fold, so the folds of a sweep never overlap."""
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    part_of: dict[int, int] = {}
    dealt = 0  # classes continue where the last left off, so the parts differ by one at most
    for label in sorted(by_class):
        members = by_class[label]
        for i in torch.randperm(len(members), generator=generator).tolist():
            part_of[members[i]] = dealt % folds
            dealt += 1
    train = [i for i in range(len(labels)) if part_of[i] != fold]
    val = [i for i in range(len(labels)) if part_of[i] == fold]
    return train, val


class ImageReader:
    """A sample's image by its key (a file's path, a dataset row's): its encoded bytes as `read`
    gives them, decoded to uint8 RGB (3, H, W), decoded smaller where a JPEG is at least twice
    `min_side`; or, `on_device` (data.decode=device), a plain JPEG's bytes as they are, for the
    device to decode. What an ImageFileDataset calls in the loader workers, picklable where
    `read` is."""

    def __init__(self, read: Callable[[str], bytes] = read_file_bytes, on_device: bool = False):
        self.read, self.on_device = read, on_device

    def __call__(self, key: str, min_side: int | None = None) -> torch.Tensor | EncodedJPEG:
        data = self.read(key)
        if self.on_device:
            return for_device(data, key, min_side)
        return decode_any(data, parse_header(data), min_side)

    def fingerprint(self) -> str | None:
        """What `read` names its images' content by (a dataset's rows), or None (files: their
        paths, sizes and times say it)."""
        named = getattr(self.read, "fingerprint", None)
        return named() if named else None


class ImageFileDataset(Dataset):
    """(path, label) samples read by `reader` (default: the files, decoded), then
    `transform`ed; `collate_fn` is what batches them (None: the DataLoader's default)."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable | None = None,
        min_side: int | None = None,
        on_bad_image: str = "skip",
        bad_images_file: str | Path | None = None,
        reader: ImageReader | None = None,
        collate_fn: Callable | None = None,
    ) -> None:
        if on_bad_image not in BAD_POLICIES:
            raise UserError(
                f"data.on_bad_image must be one of {BAD_POLICIES}, got {on_bad_image!r}"
            )
        self.samples = list(samples)
        self.transform = transform
        self.min_side = min_side
        self.on_bad_image = on_bad_image
        self.bad_images_file = Path(bad_images_file) if bad_images_file else None
        self.reader, self.collate_fn = reader or ImageReader(), collate_fn
        self._reported: set[str] = set()  # per process: a bad file is logged once, not per epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for attempt in range(len(self.samples)):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                image = self.reader(path, self.min_side)
            except (BadImageError, OSError) as err:
                self._bad(path, str(err))
                continue
            return (self.transform(image) if self.transform else image), label
        raise UserError("No readable image in the dataset: every file is bad (see bad_images.txt).")

    def _bad(self, path: str, reason: str) -> None:
        if self.on_bad_image == "error":
            raise UserError(
                f"Bad image {shown(path)}: {reason}. Fix or remove it, or set "
                "data.on_bad_image=skip."
            )
        if path in self._reported:
            return
        self._reported.add(path)
        log.warning(f"Skipping bad image {shown(path)}: {reason}")
        if self.bad_images_file is not None:
            self.bad_images_file.parent.mkdir(parents=True, exist_ok=True)
            # one short append: safe across workers
            with open(self.bad_images_file, "a", **PATH_TEXT) as f:
                f.write(f"{path}\t{reason}\n")


def label_problem(
    labels: Sequence[Hashable], index: Mapping[Hashable, int], multilabel: bool, among: str
) -> str | None:
    """Why a listed row's labels (a CSV's, a dataset's) cannot be used, or None: none, one not
    among the classes (`among` names them), several where the task takes one."""
    if not labels:
        return "no label"
    unknown = [x for x in labels if x not in index]
    if unknown:
        return f"label {unknown[0]!r} is not among {among}"
    if len(labels) > 1 and not multilabel:
        return f"{len(labels)} labels; several labels per image need model.task=multilabel"
    return None


def row_label(classes: Sequence[int], num_classes: int, multilabel: bool) -> int | torch.Tensor:
    """A listed row's label: its class index, or a multi-hot row under model.task=multilabel."""
    if not multilabel:
        return classes[0]
    return torch.zeros(num_classes).index_fill_(0, torch.tensor(classes), 1.0)


def report_bad_rows(
    bad_rows: Sequence[tuple[str, str]], source: str, artifacts_dir: Path | None
) -> None:
    """The rows of a listing (a CSV, a table of images) that a source leaves out: the first few
    one line each on the console, all of them in `bad_rows.txt` in the run dir, so a run on a
    listing with a few broken rows goes on and says which."""
    if not bad_rows:
        return
    lines = [f"{where}: {why}" for where, why in bad_rows]
    for line in lines[:SHOWN_BAD_ROWS]:
        log.warning(f"Row left out: {line}")
    more = len(bad_rows) - SHOWN_BAD_ROWS
    listing = artifacts_dir / BAD_ROWS_FILE if artifacts_dir else None
    if listing is not None and rank_zero_only.rank == 0:
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("\n".join(lines) + "\n", **PATH_TEXT)
    log.warning(
        f"{len(bad_rows)} row(s) of {source} left out"
        + (f" ({more} more than shown)" if more > 0 else "")
        + (f"; all are listed in {listing}" if listing else "")
        + "."
    )
