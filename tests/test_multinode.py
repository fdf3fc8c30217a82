"""Two nodes on this machine: each a `python train.py` of its own, started with the environment
a cluster gives it (Lightning's variables typed on each node, torchrun, SLURM's srun), meeting
over gloo on 127.0.0.1. What docs/cluster.md's "Train on a cluster" section promises is checked
here: one run dir, one set of checkpoints, the same metrics on every rank, no process left over,
and a preemption signal on one node saving and stopping the whole job, which then resumes."""

import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imgcls import REPO_ROOT
from imgcls.train import main as train_main
from tests.data_factory import write_shard_set
from tests.helpers import CLI_QUIET, dirs_under, processes_mentioning

# 2 nodes x 1 process, 4 steps an epoch of 100 digits a batch on each, 2 epochs, then test
RUN = [
    "trainer=ddp_sim",
    "trainer.devices=1",
    "trainer.num_nodes=2",
    "model=cifar_quick",
    "data.batch_size=100",
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=4",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    *CLI_QUIET,
]
NODES = 2
# what a cluster's launcher would set in every process, and what it sets per node
SLURM_JOB = {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_ID": "0",
    "SLURM_JOB_NAME": "imgcls",
    "SLURM_NTASKS": "2",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "2",
    "SLURM_NODELIST": "localhost",
    "SLURM_LOCALID": "0",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_command(
    launcher: str, node: int, port: int, log_dir: Path, extra: list[str], env_extra: dict
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of node `node`, as its launcher starts it."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in ("RANK", "WORLD_SIZE")
    }
    env.update(HYDRA_FULL_ERROR="0", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **env_extra)
    args = [*RUN, f"paths.log_dir={log_dir}", *extra]
    train = str(REPO_ROOT / "train.py")
    if launcher == "lightning":
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node))
        return [sys.executable, train, *args, f"hydra.run.dir={log_dir}/train/runs/job"], env
    if launcher == "torchrun":
        torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={NODES}"]
        torchrun += [f"--node-rank={node}", "--nproc-per-node=1", "--master-addr=127.0.0.1"]
        torchrun += [f"--master-port={port}", "--rdzv-id=job42"]
        return [*torchrun, train, *args], env
    env.update(SLURM_JOB, SLURM_PROCID=str(node), SLURM_NODEID=str(node), MASTER_PORT=str(port))
    return [sys.executable, train, *args], env


def run_nodes(
    launcher: str, log_dir: Path, *extra: str, env_extra: dict | None = None
) -> list[subprocess.CompletedProcess]:
    """Start every node's command at once and wait for all of them."""
    port = free_port()
    started = []
    for node in range(NODES):
        command, env = node_command(launcher, node, port, log_dir, list(extra), env_extra or {})
        started.append(
            subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
    finished = []
    for process in started:
        out, _ = process.communicate(timeout=300)
        finished.append(subprocess.CompletedProcess(process.args, process.returncode, out, ""))
    return finished


def rank_metrics(run: Path) -> dict[int, dict]:
    per_rank = {}
    for log_file in run.glob("train*.log"):
        for rank, metrics in re.findall(r"rank (\d) metrics: (\{.*\})", log_file.read_text()):
            per_rank[int(rank)] = json.loads(metrics)
    return per_rank


def outputs(done: list[subprocess.CompletedProcess]) -> str:
    return "\n".join(f"--- node {i}:\n{p.stdout[-3000:]}" for i, p in enumerate(done))


def one_run_of_two_ranks(tmp_path: Path, run: Path, done: list) -> dict[int, dict]:
    """Checks that `run` is the only dir the job made, with one log per rank, one set of
    checkpoints, and the same metrics on both ranks; returns them."""
    rel = run.relative_to(tmp_path).as_posix()
    made = {f"{rel}/{d}" for d in (".hydra", "checkpoints", "tensorboard", "csv")}
    assert dirs_under(tmp_path) == {"train", "train/runs", rel, *made}, outputs(done)
    assert sorted(p.name for p in run.glob("*.log")) == ["train.log", "train_rank1.log"]
    assert {"last.ckpt", "best.ckpt"} <= {p.name for p in (run / "checkpoints").iterdir()}
    per_rank = rank_metrics(run)
    assert set(per_rank) == {0, 1}, outputs(done)
    for name in ("val/acc", "val/loss", "train/loss"):
        assert per_rank[0][name] == pytest.approx(per_rank[1][name]), name
    assert processes_mentioning(tmp_path) == []
    return per_rank


@pytest.mark.slow(seconds=12)
def test_two_nodes_by_hand_write_one_run_with_the_same_metrics(tmp_path: Path) -> None:
    done = run_nodes("lightning", tmp_path, "trainer.max_epochs=1")
    assert [p.returncode for p in done] == [0, 0], outputs(done)
    run = tmp_path / "train" / "runs" / "job"
    per_rank = one_run_of_two_ranks(tmp_path, run, done)
    assert per_rank[0]["test/acc"] == pytest.approx(per_rank[1]["test/acc"])
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert json.loads((run / "status.json").read_text())["status"] == "completed"


@pytest.mark.slow(seconds=30)
def test_torchrun_nodes_stream_shards_each_its_share_and_test_every_image_once(
    tmp_path: Path,
) -> None:
    shards = write_shard_set(tmp_path / "data", per_class=20)  # 28 train, 8 val, 4 test
    sizes = json.loads((shards / "meta.json").read_text())["sizes"]
    logs = tmp_path / "logs"
    data = ["data=shards", f"data.root={shards}", "data.batch_size=4", "data.num_workers=0"]
    data += ["data.train_crop=32", "data.eval_resize=36", "data.eval_crop=32"]
    done = run_nodes("torchrun", logs, *data)
    assert [p.returncode for p in done] == [0, 0], outputs(done)
    run = logs / "train" / "runs" / "torchrun-job42"
    one_run_of_two_ranks(logs, run, done)
    # 28 images, 2 nodes, batches of 4: 3 steps each an epoch, 2 epochs
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    with open(run / "confusion.csv") as f:
        counted = sum(int(n) for row in list(csv.reader(f))[1:] for n in row[1:])
    assert counted == sizes["test"]  # every test image once over both nodes


def test_nodes_started_by_hand_without_a_shared_run_dir_stop_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command_exit, capsys
) -> None:
    """Refused as Hydra makes the run dir, before any work: node 1's command, its entry point
    run in this process on the environment its launcher gives it."""
    command, env = node_command("lightning", 1, free_port(), tmp_path, [], {})
    command.remove(f"hydra.run.dir={tmp_path}/train/runs/job")
    for key in set(os.environ) - set(env):  # the launchers' variables this process may have
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = command_exit(train_main, *command[1:])
    assert code not in (0, None)
    captured = capsys.readouterr()
    assert "need one run dir: add hydra.run.dir=" in f"{code}{captured.err}{captured.out}"
    assert not (tmp_path / "train" / "runs").exists() or not any(
        (tmp_path / "train" / "runs").iterdir()
    )


@pytest.mark.slow(seconds=20)
def test_a_signal_on_one_node_saves_and_stops_the_whole_job_which_resumes(
    tmp_path: Path,
) -> None:
    fault = [
        "+callbacks.fault._target_=tests.faults.SignalAtStep",
        "+callbacks.fault.step=4",
        "+callbacks.fault.name=SIGTERM",
        "+callbacks.fault.rank=1",
        "+callbacks.nccl._target_=tests.faults.AsIfNccl",
    ]
    done = run_nodes("slurm", tmp_path, *fault)
    assert [p.returncode for p in done] == [0, 0], outputs(done)
    run = tmp_path / "train" / "runs" / "slurm-4242.0"
    rel = run.relative_to(tmp_path).as_posix()
    made = {f"{rel}/{d}" for d in (".hydra", "checkpoints", "tensorboard", "csv")}
    assert dirs_under(tmp_path) == {"train", "train/runs", rel, *made}, outputs(done)
    assert sorted(p.name for p in run.glob("*.log")) == ["train.log", "train_rank1.log"]
    assert json.loads((run / "status.json").read_text())["status"] == "preempted"
    last = run / "checkpoints" / "last.ckpt"
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    # signalled during step 5 (of 8) on rank 1 only: its mark, combined at step 5's end, is read
    # 2 steps later, where both ranks stop together, a step before the end
    assert stopped_at == 7
    assert processes_mentioning(tmp_path) == []

    # SLURM requeues the job: same job id, its restart count up by one
    again = run_nodes("slurm", tmp_path, "ckpt_path=last", env_extra={"SLURM_RESTART_COUNT": "1"})
    assert [p.returncode for p in again] == [0, 0], outputs(again)
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert torch.load(last, weights_only=True)["global_step"] == 8
    with open(run / "csv" / "metrics.csv", newline="") as f:  # both runs' rows
        validated = {int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/acc")}
    assert validated == {0, 1}  # the resumed epoch ended, and validated, as any other
    per_rank = rank_metrics(tmp_path / "train" / "runs" / "slurm-4242.0_r1")
    assert per_rank[0]["test/acc"] == pytest.approx(per_rank[1]["test/acc"])
    assert processes_mentioning(tmp_path) == []
