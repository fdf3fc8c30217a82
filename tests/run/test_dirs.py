"""run/dirs.py: a run dir of its own however many start at once (`unique_dir`), and
`running.lock` held by one training at a time (`held`, `holder`, `describe`)."""

import json
import os
import socket
from pathlib import Path

import pytest
from lightning.pytorch.utilities import rank_zero_only

from imgcls.run.dirs import LOCK_FILE, describe, held, holder, unique_dir
from imgcls.utils.errors import UserError

# above the kernel's largest pid_max (2**22 on 64-bit Linux): no process has it, or ever will
DEAD_PID = 2**22 + 1
HOST = socket.gethostname()


def lock_for(run: Path, pid: int, host: str = HOST) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host}))


def lock_of(run: Path) -> dict:
    return json.loads((run / LOCK_FILE).read_text())


# -- one dir each -------------------------------------------------------------------------------
def test_runs_started_in_the_same_second_get_dirs_of_their_own(tmp_path: Path) -> None:
    made = [unique_dir(str(tmp_path), "2026-01-01_12-00-00") for _ in range(3)]
    assert [Path(p).name for p in made] == [
        "2026-01-01_12-00-00",
        "2026-01-01_12-00-00_2",
        "2026-01-01_12-00-00_3",
    ]


def test_unique_dir_makes_its_dir_and_parents_and_skips_names_taken(tmp_path: Path) -> None:
    parent = tmp_path / "logs" / "train" / "runs"  # none of it there yet
    first = Path(unique_dir(str(parent), "t"))
    assert first == parent / "t"
    assert first.is_dir()
    assert not any(first.iterdir())  # made empty, for this run alone
    (parent / "t_2").write_text("a file of that name")  # taken, even by something not a dir
    assert Path(unique_dir(str(parent), "t")) == parent / "t_3"
    assert (parent / "t_3").is_dir()
    assert sorted(p.name for p in parent.iterdir()) == ["t", "t_2", "t_3"]


def test_unique_dir_expands_the_home_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert unique_dir("~/logs", "t") == str(tmp_path / "logs" / "t")


def test_a_parent_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a_file").touch()
    with pytest.raises(SystemExit) as exit_:
        unique_dir(str(tmp_path / "a_file" / "logs"), "t")
    message = exit_.value.code
    assert isinstance(message, str)  # Python prints it and exits with code 1
    assert message == (
        f"UserError: cannot make a run dir in {tmp_path}/a_file/logs (Not a directory: "
        f"{tmp_path}/a_file/logs): set paths.log_dir to a folder you can write to."
    )
    assert exit_.value.__cause__ is None
    assert exit_.value.__suppress_context__  # `from None`: no chained traceback


# -- one training at a time ---------------------------------------------------------------------
def test_held_takes_running_lock_naming_this_process_and_releases_it(tmp_path: Path) -> None:
    run = tmp_path / "run"  # not made yet: held makes it
    with held(run):
        assert lock_of(run) == {"pid": os.getpid(), "host": HOST}
        assert holder(run) == {"pid": os.getpid(), "host": HOST}
    assert not (run / LOCK_FILE).exists()
    assert holder(run) is None


def test_held_releases_the_lock_when_training_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), held(tmp_path):
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK_FILE).exists()


@pytest.mark.parametrize(
    ("pid", "host"), [(os.getpid(), HOST), (DEAD_PID, "another-host")], ids=["live", "remote"]
)
def test_held_refuses_a_live_holder_and_leaves_its_lock(tmp_path: Path, pid: int, host: str):
    """A live process here, or any process on another host (its liveness cannot be seen)."""
    lock_for(tmp_path, pid, host)
    with pytest.raises(UserError) as err, held(tmp_path):
        pytest.fail("a held dir was entered")
    assert str(err.value) == (
        f"{tmp_path} is still being trained (pid {pid} on {host}; if it is not, delete "
        f"{LOCK_FILE} there)"
    )
    assert lock_of(tmp_path) == {"pid": pid, "host": host}  # the holder's lock is kept


def test_held_takes_over_the_stale_lock_of_a_dead_process(tmp_path: Path) -> None:
    lock_for(tmp_path, DEAD_PID)  # a killed run's lock
    assert holder(tmp_path) is None
    with held(tmp_path):
        assert lock_of(tmp_path) == {"pid": os.getpid(), "host": HOST}
    assert not (tmp_path / LOCK_FILE).exists()


@pytest.mark.parametrize("text", ["", '{"pid": 12'], ids=["empty", "torn"])
def test_a_lock_left_unwritten_by_a_killed_process_is_taken_over(tmp_path: Path, text: str):
    (tmp_path / LOCK_FILE).write_text(text)
    assert holder(tmp_path) is None
    with held(tmp_path):
        assert lock_of(tmp_path)["pid"] == os.getpid()


def test_the_lock_appears_whole_with_its_owner_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written beside its name, then linked to it: a run that looks while another takes the
    dir finds the lock naming its live owner, never an empty one it would take for stale."""
    real_link, seen = os.link, []

    def link(source: str, target: str) -> None:
        seen.append(json.loads(Path(source).read_text()))  # whole before it has the name
        real_link(source, target)

    monkeypatch.setattr(os, "link", link)
    with held(tmp_path):
        owner = {"pid": os.getpid(), "host": socket.gethostname()}
        assert holder(tmp_path) == seen[0] == owner
        with pytest.raises(UserError, match="is still being trained"), held(tmp_path):
            pass
    assert [p.name for p in tmp_path.iterdir()] == []  # no lock, nothing staged left behind


def test_holder_of_a_dir_without_a_lock_is_none(tmp_path: Path) -> None:
    assert holder(tmp_path) is None
    assert holder(tmp_path / "no_such_dir") is None


def test_other_ddp_ranks_do_not_see_their_rank_0_holding_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every rank settles the command again, a resume included, while rank 0 holds the dir."""
    from lightning.pytorch.utilities import rank_zero_only

    from imgcls.run.dirs import holder

    run = tmp_path / "run"
    with held(run):  # rank 0, training in it
        assert holder(run) is not None
        monkeypatch.setattr(rank_zero_only, "rank", 1)
        assert holder(run) is None  # rank 1 resumes into it all the same


def test_other_ddp_ranks_hold_nothing_themselves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 0's lock holds the dir for them: they neither take one nor trip over it."""
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    with held(tmp_path):
        assert not (tmp_path / LOCK_FILE).exists()
    lock_for(tmp_path, os.getpid())
    with held(tmp_path):
        pass
    assert lock_of(tmp_path)["pid"] == os.getpid()  # rank 0's lock is left to rank 0


def test_describe_names_the_process_its_host_and_the_way_out() -> None:
    said = describe({"pid": 4242, "host": "node7"}, Path("/logs/train/runs/a"))
    assert said == (
        "/logs/train/runs/a is still being trained (pid 4242 on node7; if it is not, delete "
        "running.lock there)"
    )
