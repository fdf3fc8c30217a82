"""reports/optuna_study.py: a search's figures from its study, as PNGs in the sweep dir; none
for a study that has no completed trial or several objectives."""

from pathlib import Path

import optuna

from imgcls.reports.optuna_study import FIGURES, write_study_plots


def test_a_study_gets_its_history_importances_and_parallel_coordinates(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))

    def objective(trial: optuna.Trial) -> float:
        return trial.suggest_float("lr", 0.01, 1.0, log=True) - trial.suggest_int("b", 1, 3)

    study.optimize(objective, 6)
    written = write_study_plots(study, tmp_path)
    assert written == [tmp_path / f"{name}.png" for name in FIGURES]
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in written)

    failed = optuna.create_study()
    failed.tell(failed.ask(), state=optuna.trial.TrialState.FAIL)
    assert write_study_plots(failed, tmp_path / "none") == []
    two = optuna.create_study(directions=["maximize", "minimize"])
    two.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), 2)
    assert write_study_plots(two, tmp_path / "none") == []
