"""run/trial_processes.py: how n_jobs trials at once share the machine: each slot its own CPUs
(or one each, round-robin, when there are fewer CPUs than slots) and GPU slot mod the count.
Trials running in these processes: tests/test_see_runs.py."""

import pytest

from imgcls.run.trial_processes import cpu_shares, slot_env, visible_gpus


def test_slots_get_disjoint_cpu_shares_or_one_each_round_robin() -> None:
    assert cpu_shares([0, 1, 2, 3, 4, 5, 6, 7], 3) == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert cpu_shares([4, 5], 2) == [[4], [5]]
    assert cpu_shares([0, 1], 3) == [[0], [1], [0]]


def test_slot_k_runs_on_gpu_k_mod_the_count_with_its_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")  # this process may use these two
    gpus = visible_gpus()
    assert gpus == ["2", "5"]
    envs = [slot_env(slot, [0, 1, 2], gpus) for slot in range(3)]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["2", "5", "2"]
    assert {env["OMP_NUM_THREADS"] for env in envs} == {"3"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # none
    assert visible_gpus() == []
    assert slot_env(0, [0], [])["CUDA_VISIBLE_DEVICES"] == ""  # left as it was: none
