"""Progressive resizing (FFCV's ResNet-50 recipes): train at low resolution early, when the net
learns coarse features and epochs are cheap, and ramp up to full resolution by the end.

The workers crop at `max_res` as usual; the device scales each training batch down to the
epoch's resolution (`DeviceBatchTransform.set_train_resolution`, data/device_batch.py), so the
loaders are never rebuilt.
`'callbacks=[default,progressive_resize]'` (configs/callbacks/progressive_resize.yaml).
"""

import lightning as L
from lightning.pytorch.callbacks import Callback

from imgcls.utils.logging import get_logger

log = get_logger(__name__)


def resolution_at(epoch: int, min_res: int, max_res: int, start: int, end: int, step: int) -> int:
    """min_res until `start`, a linear ramp to max_res at `end`, rounded down to `step` px."""
    if epoch <= start:
        return min_res
    if epoch >= end:
        return max_res
    res = min_res + (max_res - min_res) * (epoch - start) / (end - start)
    return int(res // step * step)


class ProgressiveResize(Callback):
    def __init__(
        self,
        min_res: int = 160,
        max_res: int = 192,
        start_epoch: int = 0,
        end_epoch: int = 13,
        step: int = 32,
    ) -> None:
        self.min_res, self.max_res, self.step = min_res, max_res, step
        self.start_epoch, self.end_epoch = start_epoch, end_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        res = resolution_at(
            trainer.current_epoch,
            self.min_res,
            self.max_res,
            self.start_epoch,
            self.end_epoch,
            self.step,
        )
        trainer.datamodule.device_batch.set_train_resolution(res)
        log.info(f"epoch {trainer.current_epoch}: training at {res} px")
