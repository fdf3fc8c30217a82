"""Preemption (SLURM, Kubernetes, a Ctrl-C'd `kill`): save a checkpoint, exit cleanly, resume.

Lightning already catches SIGTERM: it lets the running step finish, then raises SIGTERMException
out of `fit`. Here SIGUSR1 (SLURM's warning signal, `--signal=USR1@120`) gets the same treatment
where no SLURM auto-requeue handler owns it (the process sends itself SIGTERM, so Lightning's own
handler does the rest), and when either arrives `last.ckpt` is written at that step before the
exception leaves `fit`. train.py then skips testing, records the run as
`preempted` in status.json and exits with code 0; rerunning the same command with
`ckpt_path=last` (or the printed path) continues at the same step and data position.
"""

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from imgcls.utils.logging import get_logger

log = get_logger(__name__)


class PreemptionCheckpoint(Callback):
    def __init__(self, signals: tuple[str, ...] | list[str] = ("SIGUSR1",)) -> None:
        """`signals`: signals treated like SIGTERM (which Lightning handles itself)."""
        self.signals = [getattr(signal, name) for name in signals if hasattr(signal, name)]
        self.saved_path: Path | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def as_sigterm(signum: int, frame: Any) -> None:
            log.warning(f"Received {signal.Signals(signum).name}: stopping after this step")
            os.kill(os.getpid(), signal.SIGTERM)

        for signum in self.signals:
            if signal.getsignal(signum) in (signal.SIG_DFL, signal.SIG_IGN, None):
                signal.signal(signum, as_sigterm)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.checkpoint_callback is None:
            return
        dirpath = trainer.checkpoint_callback.dirpath
        if dirpath is None:
            return
        self.saved_path = Path(dirpath) / "last.ckpt"
        trainer.save_checkpoint(self.saved_path)
        log.warning(
            f"Preempted at step {trainer.global_step}: saved {self.saved_path}. Continue with the "
            f"same command and ckpt_path=last (or ckpt_path={self.saved_path})."
        )
