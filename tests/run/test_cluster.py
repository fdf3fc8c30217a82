import pytest

from imgcls.run import cluster
from imgcls.run.dirs import run_dir

LAUNCHERS = ("SLURM_", "TORCHELASTIC_", "RANK", "WORLD_SIZE", "LOCAL_", "NODE_RANK", "MASTER_")


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(LAUNCHERS):
            monkeypatch.delenv(name)


def test_a_process_on_its_own_is_no_clusters() -> None:
    assert cluster.cluster_process() is None
    assert cluster.job_log_name("train") == "train"
    assert cluster.config_subdir(".hydra") == ".hydra"


@pytest.mark.parametrize(
    ("env", "rank", "name"),
    [
        ({"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "1"},
         3, "slurm-77.1"),
        ({"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0",
          "SLURM_RESTART_COUNT": "2"}, 0, "slurm-77.0_r2"),
        ({"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_ID": "77"}, 0, "slurm-77.batch"),
        ({"TORCHELASTIC_RUN_ID": "77", "WORLD_SIZE": "8", "RANK": "1",
          "SLURM_RESTART_COUNT": "1"}, 1, "torchrun-77_r1"),  # srun torchrun, requeued
        ({"TORCHELASTIC_RUN_ID": "abc", "WORLD_SIZE": "8", "RANK": "5"}, 5, "torchrun-abc"),
        ({"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
          "RANK": "5"}, 5, None),  # two nodes, nothing shared: hydra.run.dir must be given
    ],
)  # fmt: skip
def test_the_rank_and_shared_name_come_from_the_launcher(
    monkeypatch: pytest.MonkeyPatch, env: dict, rank: int, name: str | None
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    process = cluster.cluster_process()
    assert (process.rank, process.shared_name) == (rank, name)
    assert cluster.job_log_name("train") == ("train" if rank == 0 else f"train_rank{rank}")
    assert cluster.config_subdir(".hydra") == (".hydra" if rank == 0 else None)


def test_torchrun_on_one_node_names_the_dir_after_its_agent(monkeypatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    name = cluster.cluster_process().shared_name
    assert name.endswith("_torchrun")
    assert name == cluster.cluster_process().shared_name


def test_an_interactive_slurm_shell_and_lightnings_own_children_are_not_launched_ranks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")
    assert cluster.cluster_process() is None
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a child Lightning started: handed its parent's dir
    assert cluster.cluster_process(num_nodes=2) is None
    monkeypatch.delenv("LOCAL_RANK")
    assert cluster.cluster_process(num_nodes=2, devices=4).rank == 4  # node 1's first process


def test_the_job_dir_is_shared_but_an_earlier_run_in_it_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):  # either may come first; both get the one dir
        monkeypatch.setenv("RANK", rank)
        assert run_dir(str(tmp_path), "2026-01-01_00-00-00") == str(tmp_path / "torchrun-job1")
    (tmp_path / "torchrun-job1" / "status.json").write_text("{}")
    for rank in ("1", "0"):  # every rank refuses alike: none waits for a peer that left
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit, match="holds an earlier run"):
            run_dir(str(tmp_path), "2026-01-01_00-00-00")
        with pytest.raises(SystemExit, match="holds an earlier run"):  # nothing to resume
            run_dir(str(tmp_path), "2026-01-01_00-00-00", resuming="last")
    (tmp_path / "torchrun-job1" / "checkpoints").mkdir()
    (tmp_path / "torchrun-job1" / "checkpoints" / "last.ckpt").write_bytes(b"")
    resumed = run_dir(str(tmp_path), "2026-01-01_00-00-00", resuming="last")
    assert resumed == str(tmp_path / "torchrun-job1")  # the job restarted into its dir
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    with pytest.raises(SystemExit, match="torchrun --rdzv-id"):
        run_dir(str(tmp_path), "2026-01-01_00-00-00")
