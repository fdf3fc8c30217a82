"""Lightning's ModelCheckpoint plus a stable `best.ckpt` name and step checkpoints.

Checkpoints keep their epoch-numbered names (`epoch_007.ckpt`), and `best.ckpt` is a relative
symlink to the best one, so `eval.py ckpt_path=<run>/checkpoints/best.ckpt` never needs the
epoch looked up. Where symlinks are not allowed it is a copy.

`every_n_train_steps=N` also refreshes `last.ckpt` every N optimizer steps, on top of the
per-epoch checkpoints (Lightning's ModelCheckpoint allows one schedule or the other): a long
epoch interrupted midway resumes from at most N steps back, at the same data position.
"""

import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

BEST_NAME = "best.ckpt"


class CheckpointWithBestLink(ModelCheckpoint):
    def __init__(self, every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.last_every_n_steps = every_n_train_steps or 0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if self.last_every_n_steps and step % self.last_every_n_steps == 0 and self.dirpath:
            path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            trainer.save_checkpoint(path)
            self.last_model_path = str(path)

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
