"""Several sweep jobs at once on one machine (`hydra.sweeper.n_jobs=N`): one fresh process each,
the machine's CPUs and GPUs shared out among the N slots.

Slot k of N runs on its own share of this process's CPUs (its affinity, and as many intra-op
threads; data/loaders.py sizes its workers from the affinity) and on GPU k mod the GPU count
(CUDA_VISIBLE_DEVICES, set before the process imports torch). A fresh process per job, never a
reused worker: a GPU chosen by CUDA_VISIBLE_DEVICES binds only before CUDA starts, and a job's
memory, CUDA context and threads end with it.

The job runs as Hydra's own launchers run one (`run_job` on its composed config: its own run
dir, job number, logs, status.json); the config, Hydra's state and the task function reach the
child pickled by cloudpickle (the task function is a closure), as hydra-joblib-launcher does.
Each process's console goes to `console.log` in its run dir; the sweeper logs each trial's end.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from imgcls.utils.logging import get_logger

log = get_logger(__name__)
CONSOLE_FILE = "console.log"
POLL_S = 0.2


def cpu_shares(cpus: list[int], slots: int) -> list[list[int]]:
    """The CPUs of each slot: disjoint contiguous shares, or one each round-robin when there are
    fewer CPUs than slots."""
    if len(cpus) < slots:
        return [[cpus[k % len(cpus)]] for k in range(slots)]
    return [cpus[k * len(cpus) // slots : (k + 1) * len(cpus) // slots] for k in range(slots)]


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def slot_env(slot: int, cpus: list[int], gpus: list[str]) -> dict[str, str]:
    """The environment of a job in `slot`: its threads and its GPU."""
    threads = str(len(cpus))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # imports as here
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


class TrialProcesses:
    """Up to `slots` jobs running at once; `start` one in a free slot, `wait_any` for one."""

    def __init__(
        self,
        slots: int,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config
        affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.cpus = cpu_shares(affinity or list(range(os.cpu_count() or 1)), slots)
        self.gpus = visible_gpus()
        self.slots: list[Any] = [None] * slots  # (job, process, job dir, result file) or None
        self.scratch = tempfile.TemporaryDirectory(prefix="imgcls-trials-")

    def __enter__(self) -> "TrialProcesses":
        return self

    def __exit__(self, *exc: object) -> None:
        for held in self.slots:
            if held is not None and held[1].poll() is None:
                held[1].terminate()
                held[1].wait()
        self.scratch.cleanup()

    @property
    def free(self) -> bool:
        return None in self.slots

    @property
    def running(self) -> bool:
        return any(held is not None for held in self.slots)

    def start(self, job: int, overrides: list[str]) -> Path:
        import cloudpickle
        from hydra.core.singleton import Singleton

        slot = self.slots.index(None)
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.job.id = job
            config.hydra.job.num = job
        job_dir = Path(config.hydra.sweep.dir) / str(config.hydra.sweep.subdir)
        job_dir.mkdir(parents=True, exist_ok=True)
        payload = Path(self.scratch.name) / f"{job}.pkl"
        result = Path(self.scratch.name) / f"{job}.json"
        state = (Singleton.get_state(), self.hydra_context, self.task_function, config)
        payload.write_bytes(cloudpickle.dumps(state))
        cpus = ",".join(map(str, self.cpus[slot]))
        command = [sys.executable, "-m", __name__, str(payload), str(result), cpus]
        with open(job_dir / CONSOLE_FILE, "ab") as console:
            process = subprocess.Popen(
                command,
                env=slot_env(slot, self.cpus[slot], self.gpus),
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        gpu = f", GPU {self.gpus[slot % len(self.gpus)]}" if self.gpus else ""
        log.info(f"Job {job} (CPUs {cpus}{gpu}): {' '.join(overrides)}")
        self.slots[slot] = (job, process, job_dir, result)
        return job_dir

    def wait_any(self) -> tuple[int, Any, Path]:
        """(job, its value or None, its run dir) of the next job to end."""
        while True:
            for slot, held in enumerate(self.slots):
                if held is not None and held[1].poll() is not None:
                    job, process, job_dir, result = held
                    self.slots[slot] = None
                    value = json.loads(result.read_text())["value"] if result.is_file() else None
                    if process.returncode:
                        log.warning(f"Job {job}'s process exited with code {process.returncode}")
                    return job, value, job_dir
            time.sleep(POLL_S)


def run_child(payload: str, result: str, cpus: str) -> None:
    """The child: its CPUs first (before torch starts threads), then the job as Hydra runs one."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, [int(cpu) for cpu in cpus.split(",")])
    import cloudpickle
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    state, hydra_context, task_function, config = cloudpickle.loads(Path(payload).read_bytes())
    Singleton.set_state(state)
    setup_globals()
    ret = run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    value = ret.return_value  # raises the job's own error, if it raised past run/record.py
    Path(result).write_text(json.dumps({"value": value}))


if __name__ == "__main__":
    run_child(*sys.argv[1:4])
