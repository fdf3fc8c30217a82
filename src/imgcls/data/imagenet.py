"""ImageNet in its folder layout (`data=imagenet data.root=DIR`):
DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG (val sorted into class folders, as
torchvision's and timm's scripts expect). The labelled val set doubles as the test split, as is
usual since the test labels are not public. Classes show as names (tench, goldfish, ...), not
WordNet ids, and any subset of the 1000 classes works.
"""

from functools import cached_property

from timm.data import ImageNetInfo

from imgcls.data.folder import FolderDataModule
from imgcls.utils.errors import UserError

LAYOUT = "DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG"


class ImageNetDataModule(FolderDataModule):
    def split_dirs(self) -> dict:
        train, val = self.root / "train", self.root / "val"
        if not (train.is_dir() and val.is_dir()):
            raise UserError(
                f"data.root={self.root} is not an ImageNet folder: expected {LAYOUT} "
                "(see torchvision.datasets.ImageNet or timm's docs for preparing val/)."
            )
        return {"train": train, "val": val, "test": val}

    @cached_property
    def class_names(self) -> list[str]:
        info = ImageNetInfo()
        index = {wnid: i for i, wnid in enumerate(info.label_names())}
        return [
            info.index_to_description(index[wnid]).split(",")[0] if wnid in index else wnid
            for wnid in self.class_dirs
        ]
