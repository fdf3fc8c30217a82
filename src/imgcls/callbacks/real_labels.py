"""ImageNet's ReaL labels (Beyer et al. 2020, "Are we done with ImageNet?", github.com/google-
research/reassessed-imagenet): for each of the 50,000 val images, the set of classes raters
found right for it. `real.json` is a list of 50,000 lists of ImageNet-1k class indices in the
order of the val files' numbers (ILSVRC2012_val_00000001.JPEG first). A prediction counts as
right when it is in its image's set; images whose set is empty (no class fits) are left out,
as the paper and timm's RealLabelsImagenet score them.

`python eval.py ckpt_path=... data=imagenet data.root=DIR real_labels=real.json` logs
`test/real_acc` and `test/real_acc_top5` beside `test/acc`, in the same test pass, without
retraining. The images are found by their file names, so the val folder may be sorted into
class folders (as it must be here) or hold some of the classes: a label of a class the data has
none of is dropped from its set.

The evaluation order of a rank is fixed (data/loaders.py: rank r of W scores images r, r + W,
r + 2W, ... of the test split, unpadded), so each batch's rows of the label table are taken on
the device by position, without reading anything back to the host. Every image must keep its
place: a bad file ends the evaluation (`data.on_bad_image=error`, set here) rather than being
skipped, and a batch an image was dropped from on the device is refused.
"""

import json
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torchmetrics import Metric

from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)

VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.[A-Za-z]+$")


def read_real_labels(path: str | Path) -> list[list[int]]:
    """real.json: each val image's list of ImageNet-1k class indices, in val file order."""
    path = Path(path)
    try:
        labels = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(
            f"real_labels={path} is not a readable JSON file ({e}): give ReaL's real.json."
        ) from None
    if not isinstance(labels, list) or not all(isinstance(row, list) for row in labels):
        raise UserError(f"real_labels={path} is not a list of lists of class indices (real.json).")
    return labels


def real_rows(
    labels: list[list[int]], files: list[str], wnids: list[str], imagenet_wnids: list[str]
) -> Tensor:
    """One boolean row per test file (in test order) over the data's classes: the classes the
    raters found right for it. `wnids`: the data's classes; `imagenet_wnids`: ImageNet-1k's, in
    the order of its class indices (those real.json uses)."""
    column = {wnid: i for i, wnid in enumerate(wnids)}
    to_data = [column.get(wnid, -1) for wnid in imagenet_wnids]
    rows = torch.zeros(len(files), len(wnids), dtype=torch.bool)
    for row, file in enumerate(files):
        found = VAL_NAME.search(Path(file).name)
        number = int(found.group(1)) if found else 0
        if not 1 <= number <= len(labels):
            raise UserError(
                f"real_labels: the test image {file} is not one of ImageNet's {len(labels)} val "
                "images (ILSVRC2012_val_00000001.JPEG ...); ReaL labels are ImageNet val's, "
                "found by file name."
            )
        for index in labels[number - 1]:
            if 0 <= index < len(to_data) and to_data[index] >= 0:
                rows[row, to_data[index]] = True
    return rows


class RealAccuracy(Metric):
    """Top-1 and top-5 accuracy against a set of right classes per image, over the images whose
    set is not empty; summed over devices."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("right", "right_top5", "counted"):
            self.add_state(name, torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, rows: Tensor) -> None:
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = rows.gather(1, top)  # none in an empty set
        self.right += hits[:, 0].sum()
        self.right_top5 += hits.any(1).sum()
        self.counted += rows.any(1).sum()

    def compute(self) -> dict[str, Tensor]:
        counted = self.counted.clamp(min=1).double()
        return {
            "test/real_acc": (self.right / counted).float(),
            "test/real_acc_top5": (self.right_top5 / counted).float(),
        }


class RealLabelsScore(Callback):
    """The model's test predictions scored against ReaL's label sets (`rows`: one per test image,
    in test order, over the data's classes), logged at the test's end. A batch's images are
    found by its index (evaluation batches are full but for a rank's last); one that came short
    (an image dropped by decoding on the device) is refused, as its rows cannot be matched."""

    def __init__(self, rows: Tensor) -> None:
        self.rows = rows
        self.metric = RealAccuracy()
        self.batch_size = self.share = 0  # this rank's: its loader's batches and its images

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = self.rows.to(pl_module.device)
        self.metric = self.metric.to(pl_module.device)
        self.metric.reset()
        loaders = trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        self.batch_size = loader.batch_size
        self.share = len(range(trainer.global_rank, len(self.rows), trainer.world_size))

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        logits = outputs["logits"]
        start = batch_idx * self.batch_size
        count = logits.shape[0]  # the shape is known on the host: no wait
        if count != min(self.batch_size, self.share - start):
            raise UserError(
                f"real_labels: test batch {batch_idx} has {count} images, not its "
                f"{min(self.batch_size, self.share - start)}: an image failed to decode on the "
                "device, so ReaL's sets cannot be matched to the images; run with "
                "data.decode=cpu to have the bad file named."
            )
        positions = torch.arange(start, start + count, device=logits.device)
        index = positions * trainer.world_size + trainer.global_rank
        self.metric.update(logits, self.rows.index_select(0, index))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, value in self.metric.compute().items():
            pl_module.log(name, value)  # the same on every rank


def real_labels_score(path: str | Path, datamodule: Any) -> RealLabelsScore:
    """The callback for `real_labels=FILE` on `datamodule` (ImageNet's val as the test split);
    every mistake refused here, before the test starts."""
    wnids = getattr(datamodule, "class_dirs", None)
    if wnids is None or not all(re.fullmatch(r"n\d{8}", w) for w in wnids):
        raise UserError(
            "real_labels scores ImageNet's val images: use data=imagenet data.root=DIR (val "
            "sorted into WordNet-id class folders)."
        )
    from timm.data import ImageNetInfo

    labels = read_real_labels(path)
    if getattr(datamodule, "on_bad_image", "error") != "error":
        # a skipped image's place is taken by the next: it would be scored on the wrong set
        log.info("real_labels: a bad image ends the evaluation (data.on_bad_image=error).")
        datamodule.on_bad_image = "error"
    files = [str(file) for file, _ in datamodule.split_samples()["test"]]
    return RealLabelsScore(real_rows(labels, files, wnids, list(ImageNetInfo().label_names())))
