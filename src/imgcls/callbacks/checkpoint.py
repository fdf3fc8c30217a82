"""Lightning's ModelCheckpoint plus a stable `best.ckpt` name for the best checkpoint so far.

Checkpoints keep their epoch-numbered names (`epoch_007.ckpt`), and `best.ckpt` is a relative
symlink to the best one, so `eval.py ckpt_path=<run>/checkpoints/best.ckpt` never needs the
epoch looked up. Where symlinks are not allowed it is a copy.
"""

import os
import shutil
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

BEST_NAME = "best.ckpt"


class CheckpointWithBestLink(ModelCheckpoint):
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._link_best(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._link_best(trainer)

    def _link_best(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero or not self.best_model_path or self.dirpath is None:
            return
        best, folder = Path(self.best_model_path), Path(self.dirpath)
        if not best.is_file():
            return
        # Relative, so a moved run dir keeps working; the best may sit in the dir of the run this
        # one resumed from.
        target = os.path.relpath(best.resolve(), folder.resolve())
        link = folder / BEST_NAME
        if link.is_symlink() and os.readlink(link) == target:
            return
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / f".{BEST_NAME}.tmp"
        staged.unlink(missing_ok=True)
        try:
            staged.symlink_to(target)
        except OSError:
            shutil.copyfile(best, staged)
        os.replace(staged, link)  # atomic: best.ckpt is never missing or half-written
