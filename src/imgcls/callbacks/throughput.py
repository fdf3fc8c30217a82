"""Images per second and the share of time the training loop waited for data, per epoch.

The classic ImageNet tutorial printed "load 0.37 s vs train 0.09 s per batch" by hand to find
that its GPUs idled; this does the same for every run. The wait is the host time between the
end of one training step and the start of the next (fetching, transferring and preparing the
batch); the rest of the epoch is the step. Only host clocks are read and only tensor shapes,
which are metadata: no device synchronization in the step. The epoch's end, where metrics are
computed, settles any queued device work, so the per-epoch figures are true even on an
asynchronous GPU.

Validation within the training epoch (`trainer.val_check_interval`, and the epoch's own before
its end) is neither: the time from the end of the training step before it to its end is left
out of both the wait and the epoch's time. It is counted from the step's end, not from
on_validation_start: before that hook Lightning starts validation's loader (its workers, where
they do not persist) and, from a loader with no length or batch limit, fetches its first batch.
"""

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from imgcls.utils.logging import get_logger

log = get_logger(__name__)


class Throughput(Callback):
    def __init__(self, data_bound_warning: float = 0.3) -> None:
        """`data_bound_warning`: warn when the loop waits for data more than this share."""
        self.data_bound_warning = data_bound_warning
        self._epoch_start = self._step_end = 0.0
        self._waited = self._validating = 0.0  # seconds of the epoch waiting; validating
        self._images = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # an epoch resumed midway gets no on_train_epoch_start: its clocks start here
        self._start_epoch()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_epoch()

    def _start_epoch(self) -> None:
        self._epoch_start = self._step_end = time.perf_counter()
        self._waited = self._validating = 0.0
        self._images = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._waited += time.perf_counter() - self._step_end
        self._images += len(batch[0])

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._step_end = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        now = time.perf_counter()
        self._validating += now - self._step_end
        self._step_end = now  # the wait for the next batch starts here

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.perf_counter() - self._epoch_start - self._validating
        if elapsed <= 0 or self._images == 0:
            return
        rate = self._images * trainer.world_size / elapsed
        wait_share = self._waited / elapsed
        pl_module.log_dict(
            {"perf/images_per_sec": rate, "perf/data_wait_share": wait_share},
            on_epoch=True,
            sync_dist=False,
        )
        log.info(
            f"epoch {trainer.current_epoch}: {rate:,.0f} images/s, "
            f"waited for data {wait_share:.0%} of the time"
        )
        if wait_share > self.data_bound_warning:
            log.warning(
                f"Data-bound: the training loop waited for data {wait_share:.0%} of epoch "
                f"{trainer.current_epoch}. More data.num_workers, data.in_memory=true for small "
                "images, or a lighter data.augment.preset would speed it up."
            )
