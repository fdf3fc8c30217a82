"""Preemption (SLURM, Kubernetes, a `kill`): the whole job saves a checkpoint, exits cleanly, and
resumes.

SIGTERM and the signals configured (SIGUSR1: SLURM's warning, `--signal=USR1@120`) only mark
the process. At the end of every training step the marks are combined over the ranks by an
all-reduce (MAX) on the run's own process group and device (NCCL on GPUs: no side group to set
up, no host wait): started at step k, read at step k + 2, by then long done (on a GPU its result
is copied to pinned memory behind the step's work and waited for by an event). When any rank
was signalled, every rank stops at the end of the same step, after its optimizer step and before
the next batch is fetched: `last.ckpt` is written at that step (all ranks take part in the
save), as a step checkpoint of Lightning's is at a batch's end, and train.py skips testing,
records the run as `preempted` in status.json and exits with code 0. Rerunning the same command
with `ckpt_path=last` continues at the next step (with data=shards at the next image of the
epoch; other sources start the rest of that epoch on a fresh pass, as Lightning restarts a plain
loader), and the resumed epoch ends, validates and checkpoints where an uninterrupted one does.

Lightning's own handling is replaced, not added to, during the fit (its SIGTERM notifier becomes
the mark; SIGUSR1 is ours before it would install SLURM's requeue handler). Lightning broadcasts
rank 0's flag at every step and reads it back on the host (a device wait per step on CUDA), and
its handler broadcasts from inside the signal handler, so a signal that reaches a node other
than rank 0's (a scheduler preempting one node) desynchronizes the collectives and the job
hangs. Under SLURM its SIGUSR1 handler saves an `hpc_ckpt` in the new run's dir, where
`ckpt_path=last` does not look, and requeues the job itself; here the job script requeues
(docs/cluster.md). After the fit the process's handlers and Lightning's notifier are back (a
SIGTERM while testing stops the test as Lightning does).
"""

import signal
from collections import deque
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from imgcls.callbacks.model_checkpoint import epoch_ends_after, validation_follows
from imgcls.utils.logging import get_logger

log = get_logger(__name__)

# steps between a mark's all-reduce and its read: on a GPU the host runs ahead of the device,
# and a result read at once would make it wait
READ_LAG = 2


class CombinedMark:
    """One step's marks, all-reduced (MAX) over the ranks without the host waiting."""

    def __init__(self, signalled: bool, device: torch.device) -> None:
        flag = torch.full((1,), int(signalled), dtype=torch.int32, device=device)
        if device.type == "cuda":  # queued behind the step: the host reads pinned memory later
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.host = torch.empty(1, dtype=torch.int32, pin_memory=True)
            self.host.copy_(flag, non_blocking=True)
            self.done: Any = torch.cuda.Event()
            self.done.record()
        else:
            self.host = flag
            self.done = dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True)

    def any_signalled(self) -> bool:
        """Whether any rank was signalled: read READ_LAG steps later, when it is long done."""
        if isinstance(self.done, torch.cuda.Event):
            self.done.synchronize()
        else:
            self.done.wait()
        return bool(self.host.item())  # a host tensor: no device wait


class PreemptionCheckpoint(Callback):
    def __init__(self, signals: tuple[str, ...] | list[str] = ("SIGUSR1",)) -> None:
        """`signals`: signals treated like SIGTERM."""
        names = {"SIGTERM", *signals}
        self.signals = [getattr(signal, name) for name in names if hasattr(signal, name)]
        self.saved_path: Path | None = None
        self._signalled = False  # this process got one of the signals
        self._in_flight: deque[CombinedMark] = deque()  # the marks of the last steps
        self._combine = False  # several processes: the marks are all-reduced
        self._stopping = False  # a rank was signalled: stop at the next optimizer step's end
        self._last_step = 0  # the global step at the last batch's end
        self._device = torch.device("cpu")  # where the marks are all-reduced
        self.stopped_after_fit = False  # a rank was signalled when the fit ended: no test
        self.save_error: Exception | None = None  # why last.ckpt could not be written

    def _mark(self, signum: int, frame: Any) -> None:
        if not self._signalled:
            log.warning(f"Received {signal.Signals(signum).name}: stopping the job's ranks")
        self._signalled = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Before Lightning installs its handlers (so none of its own runs, from the sanity
        check on): its SIGTERM notifier becomes the mark, and the other signals mark too; its
        teardown of the fit puts back what the process had."""
        if stage != "fit":
            return
        self._signalled, self._in_flight = False, deque()
        self.stopped_after_fit, self.save_error = False, None
        connector = trainer._signal_connector
        previous = {signum: signal.getsignal(signum) for signum in self.signals}
        connector._sigterm_notifier_fn = self._mark
        for signum in self.signals:
            signal.signal(signum, self._mark)
        lightnings_teardown = connector.teardown

        def teardown() -> None:  # Lightning restores the handlers it found: ours
            lightnings_teardown()
            for signum, handler in previous.items():
                if handler is not None:
                    signal.signal(signum, handler)
            del connector._sigterm_notifier_fn, connector.teardown  # Lightning's own again

        connector.teardown = teardown
        # Lightning's per-step broadcast of rank 0's flag: the marks are combined here instead
        trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._combine = trainer.world_size > 1 and dist.is_available() and dist.is_initialized()
        self._stopping, self._last_step = False, trainer.global_step
        if self._combine:  # NCCL combines device tensors; gloo host ones (with no host wait)
            nccl = dist.get_backend() == "nccl"
            self._device = trainer.strategy.root_device if nccl else torch.device("cpu")

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._combine:
            self._stopping = self._signalled
        else:
            self._in_flight.append(CombinedMark(self._signalled, self._device))
            if len(self._in_flight) > READ_LAG and self._in_flight.popleft().any_signalled():
                self._stopping = True
        # at a batch that stepped the optimizer (not halfway through accumulating gradients),
        # on every rank at this same step
        stepped, self._last_step = trainer.global_step != self._last_step, trainer.global_step
        if self._stopping and stepped and not self._evaluation_follows(trainer):
            raise SIGTERMException

    @staticmethod
    def _evaluation_follows(trainer: L.Trainer) -> bool:
        """Whether validation or the epoch's end comes after this batch. A stop here would lose
        them: Lightning resumes a checkpoint taken at a batch's end as that batch done and
        skips what followed it (the epoch's validation, its end's hooks and checkpoint). The
        stop waits for the next batch; where the fit ends first, on_train_end tells."""
        return validation_follows(trainer) or epoch_ends_after(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Whether any rank was signalled before the fit ended (in its last steps, or in the
        last validation): then the run stops here, as preempted, before testing. One more
        combined read, the last marks waited for: every rank decides alike."""
        if not self._combine:
            self.stopped_after_fit = self._signalled
            return
        while self._in_flight:
            self._in_flight.popleft().any_signalled()
        self.stopped_after_fit = CombinedMark(self._signalled, self._device).any_signalled()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._in_flight.clear()  # not waited for: a rank failing alone never issued its own
        if not isinstance(exception, SIGTERMException):
            return
        if trainer.checkpoint_callback is None or trainer.checkpoint_callback.dirpath is None:
            return
        path = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        try:  # raising here would skip Lightning's teardown (handlers, workers, strategy)
            trainer.save_checkpoint(path)
        except Exception as err:  # a diverged run's refusal, a full disk: train.py raises it
            self.save_error = err
            return
        self.saved_path = path
        log.warning(
            f"Preempted at step {trainer.global_step}: saved {self.saved_path}. Continue with the "
            f"same command and ckpt_path=last (or ckpt_path={self.saved_path})."
        )
