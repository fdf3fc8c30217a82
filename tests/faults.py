"""Faults injected into a training subprocess through its config (`+callbacks.fault=...`), and
a witness of what each DDP rank ends with (`+callbacks.witness=...`)."""

import os
import signal
import sys
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILL this process (no cleanup at all) just before training step `step` + 1."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAtStep(Callback):
    """Send this process `name` (SIGTERM, SIGUSR1) during training step `step` + 1; under DDP,
    only the process of global rank `rank` (a scheduler preempting one node)."""

    def __init__(self, step: int, name: str, rank: int = 0) -> None:
        self.step, self.signum, self.rank = step, getattr(signal, name), rank

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), self.signum)


class KillDuringSave(Callback):
    """SIGKILL this process halfway through writing its first checkpoint of training step
    `step` (the checkpoint's global_step)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        real_save = torch.save

        def save_then_die(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            if trainer.global_step != self.step or not hasattr(f, "write"):
                return real_save(obj, f, *args, **kwargs)
            f.write(b"PK\x03\x04 half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
            return None

        torch.save = save_then_die


class InfiniteLossOnRank(Callback):
    """Make the training loss of DDP rank `rank` infinite at training step `step` + 1 only (its
    images set to infinity: the other ranks' losses stay finite at that step)."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            batch[0].fill_(float("inf"))


class AsIfNccl(Callback):
    """imgcls's own code sees the process group as NCCL's (a CPU has only gloo), and no process
    group but the run's may be opened: the marks of a preemption must be combined on it."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        real_backend = dist.get_backend

        def backend(group: Any = None) -> str:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            return "nccl" if caller.startswith("imgcls.") else real_backend(group)

        def no_side_group(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("a process group besides the run's was opened")

        dist.get_backend, dist.new_group = backend, no_side_group


class FailOnRankAfterItsFirstRun(Callback):
    """Raise in DDP rank `rank` at its first training step in every run but the first of those
    started with the same `marker` file (each run's rank is a process of its own: the file says
    a run came before)."""

    def __init__(self, rank: int, marker: str) -> None:
        self.rank, self.marker, self.checked = rank, marker, False

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        if self.checked or trainer.global_rank != self.rank:
            return
        self.checked = True
        if os.path.exists(self.marker):
            raise RuntimeError(f"rank {self.rank} fails on purpose")
        open(self.marker, "x").close()


class TrainableWeightsPerRank(Callback):
    """At the end of training, each rank's trainable tensors into `folder`/rank<r>.pt: what a
    DDP run's ranks hold, to compare (only rank 0 writes checkpoints)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        kept = {n: p.detach().cpu() for n, p in pl_module.named_parameters() if p.requires_grad}
        os.makedirs(self.folder, exist_ok=True)
        torch.save(kept, os.path.join(self.folder, f"rank{trainer.global_rank}.pt"))
