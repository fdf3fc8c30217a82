"""The progress bar: Lightning's rich bar, redrawn every `refresh_rate` training batches and at
each epoch's last, as Lightning documents `refresh_rate` ("at which rate, in number of batches,
the progress bars get updated"; its rich bar takes it only as on or off). Each redraw reads the
logged metrics into the bar and takes rich's lock, ~40 µs of host time: a tenth of that per step
is a step of a small net on a GPU queued sooner. Rich repaints the screen ten times a second
whatever the rate, so a bar updated every 10 batches of a fast loop looks the same."""

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    def __init__(self, refresh_rate: int = 10, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        done, rate = batch_idx + 1, self.refresh_rate
        if not rate or done % rate == 0 or done >= self.total_train_batches:  # 0: Lightning's
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
