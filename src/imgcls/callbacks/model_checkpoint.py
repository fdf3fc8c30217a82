"""Lightning's ModelCheckpoint plus a stable `best.ckpt` name and step checkpoints.

Checkpoints keep their epoch-numbered names (`epoch_007.ckpt`), and `best.ckpt` is a relative
symlink to the best one, so `eval.py ckpt_path=<run>/checkpoints/best.ckpt` never needs the
epoch looked up. Where symlinks are not allowed it is a copy.

`last.ckpt` is written at the end of every epoch (Lightning 2.6 refreshes it only at an epoch
that also saved a top-k checkpoint: after epochs without a new best it would hold an old one)
and of every validation within an epoch (`trainer.val_check_interval`), and
`every_n_train_steps=N` also refreshes it every N optimizer steps, on top of the per-epoch
checkpoints (Lightning's ModelCheckpoint allows one schedule or the other): a long epoch
interrupted midway resumes from at most N steps back.

Each step writes `last.ckpt` at most once, at the last of its saves: a step whose epoch ends
leaves it to the epoch's end, after Lightning's top-k save there (a `last.ckpt` written before
it would name the previous best, and writing it again would write a whole checkpoint twice).
"""

import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from imgcls.utils.atomic_save import written_whole

BEST_NAME = "best.ckpt"


def epoch_ends_after(trainer: L.Trainer) -> bool:
    """Whether the training epoch's end follows this batch: its last batch, max_steps, or a
    stop (early stopping, a timer) that may be taken. Lightning's own tests, as its epoch loop
    makes them (its `done` also waits for a resumed epoch's validation: on the first batch
    after a resume it says no at the epoch's last batch)."""
    stopping = trainer.should_stop and trainer.fit_loop._can_stop_early
    return trainer.fit_loop.epoch_loop._is_training_done or stopping


def validation_follows(trainer: L.Trainer) -> bool:
    """Whether Lightning validates after this batch: its own decision (validation enabled this
    epoch, the batch interval, counted across epochs without check_val_every_n_epoch, or the
    time interval), as its epoch loop takes it at the batch's end."""
    fetcher = trainer.fit_loop._data_fetcher
    return fetcher is not None and trainer.fit_loop.epoch_loop._should_check_val_fx(fetcher)


class CheckpointWithBestLink(ModelCheckpoint):
    def __init__(self, every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.last_every_n_steps = every_n_train_steps or 0
        self._last_saved_here = -1  # the step of the last last.ckpt this class wrote

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        every = self.last_every_n_steps
        # a validation or the epoch's end after this batch writes it (with what they do)
        later = validation_follows(trainer) or epoch_ends_after(trainer)
        if every and trainer.global_step % every == 0 and not later:
            self._save_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last(trainer)
        self.link_best(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        fitting = trainer.state.fn == TrainerFn.FITTING
        if not trainer.sanity_checking and not (fitting and epoch_ends_after(trainer)):
            self._save_last(trainer)
        self.link_best(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's writes last.ckpt where none of its own saves wrote a checkpoint
        # (save_top_k=0): at the step whose epoch's end just wrote it here
        if self._last_saved_here != trainer.global_step:
            super().on_train_end(trainer, pl_module)

    def _save_last(self, trainer: L.Trainer) -> None:
        """last.ckpt at this step, unless this step has been saved already (by Lightning, at a
        new best, or here)."""
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.fast_dev_run
        if not self.save_last or self.dirpath is None or not fitting:
            return
        if trainer.global_step in (self._last_global_step_saved, self._last_saved_here):
            return
        path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        self.last_model_path = str(path)  # before saving: it is part of the saved state
        trainer.save_checkpoint(path)
        self._last_saved_here = trainer.global_step

    def link_best(self, trainer: L.Trainer) -> None:
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
        with written_whole(link) as staged:  # best.ckpt is never missing or half-written
            staged.unlink(missing_ok=True)  # a killed save's
            try:
                staged.symlink_to(target)
            except OSError:
                shutil.copyfile(best, staged)
