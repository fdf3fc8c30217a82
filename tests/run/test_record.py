"""run/record.py: status.json says how a run ended (completed, failed with its error, preempted,
interrupted); a failed job of a sweep is recorded and returns no value, a single run's failure
is raised; metrics.json holds plain numbers."""

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from imgcls.run import record
from imgcls.run.record import (
    Preempted,
    run_recorded,
    save_metrics,
    scalar_metrics,
    write_status,
)
from imgcls.utils.errors import UserError


def run_cfg(output_dir: Path, train: bool = True) -> DictConfig:
    return OmegaConf.create({"paths": {"output_dir": str(output_dir)}, "train": train})


def status_of(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def fails(err: BaseException):
    def task() -> float:
        raise err

    return task


def test_a_run_that_ends_is_recorded_completed_with_its_duration(tmp_path: Path) -> None:
    run = tmp_path / "run"  # not made yet
    assert run_recorded(run_cfg(run), lambda: 0.875) == 0.875  # the sweeper's value, untouched
    status = status_of(run)
    assert status.keys() == {"status", "duration_s"}
    assert status["status"] == "completed"
    assert isinstance(status["duration_s"], float)
    assert status["duration_s"] >= 0


def test_a_single_runs_failure_is_recorded_with_its_error_and_raised(tmp_path: Path) -> None:
    boom = ValueError("the loader broke")
    with pytest.raises(ValueError, match="the loader broke") as err:
        run_recorded(run_cfg(tmp_path), fails(boom))
    assert err.value is boom  # the error itself, not wrapped
    status = status_of(tmp_path)
    assert (status["status"], status["error"]) == ("failed", "ValueError: the loader broke")


@pytest.mark.parametrize(
    ("err", "traceback"),
    [(UserError("data.batch_size=0 is not allowed"), False), (RuntimeError("CUDA OOM"), True)],
    ids=["UserError", "RuntimeError"],
)
def test_a_failed_sweep_job_is_recorded_and_the_sweep_goes_on(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    err: Exception,
    traceback: bool,
) -> None:
    monkeypatch.setattr(record, "in_multirun", lambda: True)
    with caplog.at_level("ERROR"):
        assert run_recorded(run_cfg(tmp_path), fails(err)) is None  # no value, no raise
    said = f"{type(err).__name__}: {err}"
    assert status_of(tmp_path)["status"] == "failed"
    assert status_of(tmp_path)["error"] == said
    (logged,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert logged.getMessage() == f"This job failed; the sweep goes on. {said}"
    assert bool(logged.exc_info) == traceback  # a UserError is its one line


def test_in_multirun_is_hydras_mode(make_cfg) -> None:
    make_cfg()  # as a single run's command line composes it
    assert not record.in_multirun()
    make_cfg("hydra.mode=MULTIRUN")  # as a job of a sweep
    assert record.in_multirun()


@pytest.mark.parametrize("in_multirun", [False, True], ids=["single run", "sweep"])
def test_a_preempted_run_is_recorded_and_not_a_failure(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    in_multirun: bool,
) -> None:
    monkeypatch.setattr(record, "in_multirun", lambda: in_multirun)
    with caplog.at_level("WARNING"):
        result = run_recorded(run_cfg(tmp_path), fails(Preempted("SIGTERM at step 4")))
    assert result is None  # exit 0: a scheduler may requeue the same command
    status = status_of(tmp_path)
    assert (status["status"], status["detail"]) == ("preempted", "SIGTERM at step 4")
    assert "Preempted (SIGTERM at step 4); resume with ckpt_path=last." in caplog.text


def test_an_interrupted_run_says_how_to_resume(make_cfg, tmp_path: Path, caplog) -> None:
    def pressed_ctrl_c() -> None:
        raise KeyboardInterrupt

    with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt):
        run_recorded(make_cfg(), pressed_ctrl_c)
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "interrupted"
    assert "resume with the same command and ckpt_path=last" in caplog.text


def test_an_interrupted_evaluation_is_recorded_without_resume_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(record, "in_multirun", lambda: True)  # not swallowed even in a sweep
    with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt):
        run_recorded(run_cfg(tmp_path, train=False), fails(KeyboardInterrupt()))
    assert status_of(tmp_path)["status"] == "interrupted"
    assert "ckpt_path=last" not in caplog.text  # nothing to resume


def test_status_is_the_status_of_the_output_dir_read_at_the_end(tmp_path: Path) -> None:
    """A resumed run moves paths.output_dir to the resumed run's dir while it runs."""
    cfg = run_cfg(tmp_path / "command")

    def resumes() -> float:
        cfg.paths.output_dir = str(tmp_path / "resumed_run")
        return 1.0

    run_recorded(cfg, resumes)
    assert status_of(tmp_path / "resumed_run")["status"] == "completed"
    assert not (tmp_path / "command").exists()


def test_only_rank_zero_writes_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    write_status(tmp_path, {"status": "completed"})
    save_metrics({"test/acc": 0.5}, tmp_path)
    assert not list(tmp_path.iterdir())


def test_metrics_are_plain_floats_saved_sorted(tmp_path: Path) -> None:
    logged = {"val/acc": torch.tensor(0.75), "test/loss": torch.tensor(1.5), "epoch": 3}
    metrics = scalar_metrics(logged)
    assert metrics == {"val/acc": 0.75, "test/loss": 1.5, "epoch": 3.0}
    assert all(type(v) is float for v in metrics.values())
    save_metrics(metrics, tmp_path / "run")  # the dir made where missing
    text = (tmp_path / "run" / "metrics.json").read_text()
    assert json.loads(text) == metrics
    assert list(json.loads(text)) == ["epoch", "test/loss", "val/acc"]
    assert text.endswith("}\n")
