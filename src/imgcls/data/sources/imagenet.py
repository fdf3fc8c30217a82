"""ImageNet in its folder layout (`data=imagenet data.root=DIR`):
DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG (val sorted into class folders, as
torchvision's and timm's scripts expect). The labelled val set doubles as the test split, as is
usual since the test labels are not public: then the test score is on the images that picked
best.ckpt, and the run says so. `data.val_from_train=N` holds about N train images out
(stratified, seeded by `split_seed`) as the validation split instead, a "minival", so the choice
and the score use different images. Classes show as names (tench, goldfish, ...), not WordNet
ids, and any subset of the 1000 classes works. Names are unique: ImageNet-1k has two cranes and
two maillots, told apart here; any other clash gets its WordNet id.
"""

from functools import cached_property
from typing import Any

from timm.data import ImageNetInfo

from imgcls.data.sources.folder import FolderDataModule
from imgcls.utils.errors import UserError

LAYOUT = "DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG"
# WordNet ids whose first synonym another class shares
DISTINCT_NAMES = {
    "n02012849": "crane (bird)",
    "n03126707": "crane (machine)",
    "n03710637": "maillot (tights)",
    "n03710721": "maillot (swimsuit)",
}


def class_names_of(wnids: list[str]) -> list[str]:
    """Human names for WordNet ids: the first synonym, told apart where two classes share it."""
    info = ImageNetInfo()
    index = {wnid: i for i, wnid in enumerate(info.label_names())}
    names = [
        DISTINCT_NAMES.get(wnid)
        or (info.index_to_description(index[wnid]).split(",")[0] if wnid in index else wnid)
        for wnid in wnids
    ]
    clashes = {name for name in names if names.count(name) > 1}
    return [f"{n} ({w})" if n in clashes else n for n, w in zip(names, wnids, strict=True)]


class ImageNetDataModule(FolderDataModule):
    def __init__(self, root: str, val_from_train: int | None = None, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        if val_from_train is not None and (val_from_train < 1 or self.folds):
            raise UserError(
                f"data.val_from_train={val_from_train}: give a number of train images (1 or "
                "more) to validate on, without data.folds (folds carve validation themselves)."
            )
        self.val_from_train = val_from_train

    @property
    def test_is_validation(self) -> bool:
        return self.val_from_train is None

    def split_dirs(self) -> dict:
        train, val = self.root / "train", self.root / "val"
        if not (train.is_dir() and val.is_dir()):
            raise UserError(
                f"data.root={self.root} is not an ImageNet folder: expected {LAYOUT} "
                "(see torchvision.datasets.ImageNet or timm's docs for preparing val/)."
            )
        return {"train": train, "val": None if self.val_from_train else val, "test": val}

    def carved_fractions(self, missing: list[str], train_images: int) -> list[float]:
        """The minival: `val_from_train` of the train folder's images."""
        if self.val_from_train >= train_images:
            raise UserError(
                f"data.val_from_train={self.val_from_train} is not below the {train_images} "
                "train images: hold out fewer (10000 is a common ImageNet minival)."
            )
        return [train_images - self.val_from_train, self.val_from_train]

    @cached_property
    def class_names(self) -> list[str]:
        return class_names_of(self.class_dirs)
