"""Preemption (SLURM, Kubernetes, a `kill`): the whole job saves a checkpoint, exits cleanly, and
resumes.

SIGTERM and the signals configured (SIGUSR1: SLURM's warning, `--signal=USR1@120`) only mark
the process. At the start of every training step the mark is combined over all ranks with an
all-reduce (MAX) of one CPU integer, started at one step and read at the next, so no step waits
for it and no rank waits for the device; when any rank was signalled, every rank raises
Lightning's SIGTERMException at the same step, `last.ckpt` is written at that step (all ranks
take part in the save), and train.py skips testing, records the run as `preempted` in
status.json and exits with code 0. Rerunning the same command with `ckpt_path=last` continues
at the same step (with data=shards at the same image of the epoch; other sources start the rest
of that epoch on a fresh pass, as Lightning restarts a plain loader).

Lightning's own handling is replaced, not added to, from the fit's set-up on (its SIGTERM
notifier becomes the mark; SIGUSR1 is ours before it would install SLURM's requeue handler).
Lightning broadcasts rank 0's flag at every step and reads it back on the host (a device wait
per step on CUDA), and its handler broadcasts from inside the signal handler, so a signal that
reaches a node other than rank 0's (a scheduler preempting one node) desynchronizes the
collectives and the job hangs. Under SLURM its SIGUSR1 handler saves an `hpc_ckpt` in the new
run's dir, where `ckpt_path=last` does not look, and requeues the job itself; here the job
script requeues (docs/cluster.md). After the fit (testing), Lightning's handlers
are back.
"""

import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from imgcls.utils.logging import get_logger

log = get_logger(__name__)


class PreemptionCheckpoint(Callback):
    def __init__(self, signals: tuple[str, ...] | list[str] = ("SIGUSR1",)) -> None:
        """`signals`: signals treated like SIGTERM."""
        names = {"SIGTERM", *signals}
        self.signals = [getattr(signal, name) for name in names if hasattr(signal, name)]
        self.saved_path: Path | None = None
        self._signalled = False  # this process got one of the signals
        self._group: Any = None  # the CPU process group the marks are combined over
        self._pending: tuple[Any, torch.Tensor] | None = None  # (work, its tensor)

    def _mark(self, signum: int, frame: Any) -> None:
        if not self._signalled:
            log.warning(f"Received {signal.Signals(signum).name}: stopping the job's ranks")
        self._signalled = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Before Lightning installs its handlers (so none of its own runs, from the sanity
        check on): its SIGTERM notifier becomes the mark, and the other signals mark too."""
        if stage != "fit":
            return
        self._signalled, self._pending = False, None
        trainer._signal_connector._sigterm_notifier_fn = self._mark
        for signum in self.signals:
            signal.signal(signum, self._mark)
        # Lightning's per-step broadcast of rank 0's flag: the marks are combined here instead
        trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            # gloo: the mark stays on the host, whatever backend the gradients use (on several
            # nodes gloo needs to reach them too: GLOO_SOCKET_IFNAME names the interface)
            self._group = (
                dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
            )

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._group is None:
            if self._signalled:
                raise SIGTERMException
            return
        if self._pending is not None:
            work, combined = self._pending
            work.wait()
            self._pending = None
            if combined.item():  # a CPU tensor: no device wait
                raise SIGTERMException  # on every rank, at this same step
        mark = torch.tensor([int(self._signalled)], dtype=torch.int32)
        work = dist.all_reduce(mark, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, mark)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish_pending()

    def _finish_pending(self) -> None:
        """Every rank ends the same number of all-reduces: the one still in flight is waited
        for, then the side group (if any) is released."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None
        if self._group is not None and self._group is not dist.group.WORLD:
            dist.destroy_process_group(self._group)
        self._group = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        self._finish_pending()
        if trainer.checkpoint_callback is None or trainer.checkpoint_callback.dirpath is None:
            return
        self.saved_path = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        trainer.save_checkpoint(self.saved_path)
        log.warning(
            f"Preempted at step {trainer.global_step}: saved {self.saved_path}. Continue with the "
            f"same command and ckpt_path=last (or ckpt_path={self.saved_path})."
        )
