"""Stochastic weight averaging (Izmailov et al. 2018): Lightning's StochasticWeightAveraging, whose
averaged weights then are the run's result.

From `swa_epoch_start` the lr anneals to `swa_lrs` (SWALR, per epoch, in place of the run's
schedule) and the weights at the start of each epoch are averaged; a net with BatchNorm gets one
more pass over the training data to re-estimate its statistics. Lightning leaves the averaged
weights in the model when fit ends, after the last checkpoint: here they are saved as
`checkpoints/swa.ckpt`, and `best.ckpt` points to it, so the test after training, eval.py and
predict all take the averaged model.
"""

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import StochasticWeightAveraging

from imgcls.callbacks.ema import EMA
from imgcls.callbacks.model_checkpoint import CheckpointWithBestLink
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)

SWA_NAME = "swa.ckpt"


class SWA(StochasticWeightAveraging):
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if any(isinstance(c, EMA) for c in trainer.callbacks):
            raise UserError(
                "callbacks swa and ema both average the weights, each its own way: keep one "
                "(callbacks=[default,swa] or callbacks=[default,ema])."
            )
        super().setup(trainer, pl_module, stage)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)  # the averaged weights into the model
        checkpoints = [c for c in trainer.checkpoint_callbacks if c.dirpath]
        if not checkpoints or self.n_averaged is None or trainer.fast_dev_run:
            return
        # the fit ends after its current epoch counted up: it reached the last SWA epoch (and
        # the BatchNorm pass after it), or it stopped early and the weights are not the average
        if self._max_epochs == -1 or trainer.current_epoch - 1 < self.swa_end:
            log.warning(
                "Training stopped before the last SWA epoch: the weights are not the average, "
                "and best.ckpt stays the best validated checkpoint."
            )
            return
        path = Path(checkpoints[0].dirpath) / SWA_NAME
        for callback in checkpoints:  # the run's result: what its test and best.ckpt take
            callback.best_model_path = str(path)
        trainer.save_checkpoint(path)
        for callback in checkpoints:
            if isinstance(callback, CheckpointWithBestLink):
                callback.link_best(trainer)
