"""run/optuna_search.py: the sweeper grammar as Optuna 4 distributions, the seeded sampler that
two processes (or a resume) share without repeating draws, how a trial's status.json becomes
its state in the study, and which failures end a search. Whole searches (two processes on one
study, n_jobs, pruning, the stop) run in tests/test_see_runs.py."""

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from imgcls.callbacks.optuna_pruning import EPOCHS_REACHED, TRAINING_STARTED
from imgcls.reports.optuna_study import open_storage
from imgcls.run.optuna_search import (
    ContinuingTPESampler,
    OptunaSearch,
    cannot_succeed,
    grid_of,
    quoted,
    search_space,
)
from imgcls.utils.errors import UserError


def test_the_grammar_becomes_optunas_distributions() -> None:
    space, fixed = search_space(
        [
            "optimizer.lr=tag(log, interval(0.005, 0.5))",
            "model.label_smoothing=interval(0.0, 0.3)",
            "trainer.max_epochs=interval(2, 8)",
            "data.batch_size=choice(32, 64, 128)",
            "seed=range(1, 4)",
            "a=range(0.1, 0.4, 0.1)",
            "b=shuffle(range(3))",
            "model=cifar_quick",
            "model.label_smoothing=0.1",  # the command line after the params: its value wins
        ]
    )
    assert sorted(space.pop("b").choices) == [0, 1, 2]  # in shuffled order
    assert {k: v for k, v in space.items() if k != "a"} == {
        "optimizer.lr": FloatDistribution(0.005, 0.5, log=True),
        "trainer.max_epochs": FloatDistribution(2.0, 8.0),  # Hydra's interval: floats
        "data.batch_size": CategoricalDistribution([32, 64, 128]),
        "seed": IntDistribution(1, 3),  # range's stop is exclusive
    }
    steps = space.pop("a")
    assert (steps.low, steps.high, steps.step) == (0.1, pytest.approx(0.3), 0.1)
    assert fixed == {"model": "cifar_quick", "model.label_smoothing": "0.1"}
    assert grid_of({"seed": space["seed"], "d": space["data.batch_size"]}) == {
        "seed": [1, 2, 3],
        "d": [32, 64, 128],
    }
    with pytest.raises(UserError, match="a grid takes choice"):
        grid_of({"optimizer.lr": space["optimizer.lr"]})


def test_a_quoted_value_reads_back_as_itself() -> None:
    parser = OverridesParser.create()
    for text in ("/data/it's a \\ dir/study.journal", "sqlite:///a\\", "x\\'y"):
        (override,) = parser.parse_overrides([f"x.storage={quoted(text)}"])
        assert override.value() == text


def test_the_seeded_sampler_draws_anew_for_every_trial_in_every_process(tmp_path: Path) -> None:
    """Two processes on one study with the same seed (each its own sampler) draw distinct
    points; a fresh study with that seed draws the same first point again (reproducible). (A
    database URL opens through Optuna's own get_storage; SQLite costs seconds to create.)"""

    def study(path: Path) -> optuna.Study:
        return optuna.create_study(
            study_name="s",
            storage=open_storage(str(path)),
            sampler=ContinuingTPESampler(seed=7, n_startup_trials=10),
            load_if_exists=True,
        )

    first, second = study(tmp_path / "a.journal"), study(tmp_path / "a.journal")
    drawn = []
    for worker in (first, second, first, second):
        trial = worker.ask()
        drawn.append(trial.suggest_float("lr", 0.0, 1.0))
        worker.tell(trial, 0.5)
    assert len(set(drawn)) == 4
    again = study(tmp_path / "b.journal").ask()
    assert again.suggest_float("lr", 0.0, 1.0) == drawn[0]


@pytest.mark.parametrize(
    ("error", "started", "stops"),
    [
        ("UserError: CIFAR10 not found under /data/cifar10. Put it there", False, True),
        ("UserError: data.batch_size=0 is not allowed", False, True),  # not a searched key
        ("UserError: optimizer.lr=-0.1 is not allowed", False, False),  # a searched key
        ("UserError: Unknown net '0.25'", False, False),  # this trial's value
        ("UserError: the loss was NaN at step 3 (lr 0.3)", True, False),  # during training
        ("OutOfMemoryError: CUDA out of memory", False, False),  # not a mistake
    ],
)
def test_only_a_mistake_no_trial_escapes_ends_the_search(
    error: str, started: bool, stops: bool
) -> None:
    trial = optuna.trial.create_trial(
        params={"optimizer.lr": 0.25},
        distributions={"optimizer.lr": FloatDistribution(0.0, 1.0)},
        user_attrs={TRAINING_STARTED: True} if started else {},
        state=optuna.trial.TrialState.FAIL,
    )
    status = {"status": "failed", "error": error}
    assert cannot_succeed(status, trial, ["optimizer.lr"]) == stops


def search_in(tmp_path: Path, config: dict[str, Any], **settings: Any) -> OptunaSearch:
    """A search of 4 random trials, one at a time, whose sweep dir is `tmp_path`."""
    return OptunaSearch(
        config=OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, **config}),
        hydra_context=None,
        task_function=None,
        launcher=None,
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="s",
        n_trials=4,
        n_jobs=1,
        **{"direction": "maximize", **settings},
    )


def test_each_trials_end_reaches_the_study_and_its_status(tmp_path: Path) -> None:
    search = search_in(
        tmp_path, {"optimized_metric": "val/acc_best"}, storage=None, max_failure_rate=0.5
    )
    study = search.open_study({})
    assert search.storage == str(tmp_path / "optuna.journal")  # in the sweep dir
    ends = {
        "completed": ({"status": "completed"}, 0.8, None),
        # two validations an epoch: 4 reports in 2 epochs
        "pruned": (
            {"status": "pruned", "detail": "pruned"},
            None,
            dict(enumerate([0.1, 0.2, 0.3, 0.4])),
        ),
        "failed": ({"status": "failed", "error": "RuntimeError: CUDA out of memory"}, None, {}),
        "nan": ({"status": "completed"}, float("nan"), None),
    }
    for number, (name, (status, value, reported)) in enumerate(ends.items()):
        trial = study.ask()
        for step, reported_value in (reported or {}).items():
            trial.report(reported_value, step)
            trial.set_user_attr(EPOCHS_REACHED, step // 2 + 1)  # as the pruning callback does
        (tmp_path / name).mkdir()
        (tmp_path / name / "status.json").write_text(json.dumps(status))
        search.tell(study, trial, value, tmp_path / name, [])
        assert json.loads((tmp_path / name / "status.json").read_text())["trial"] == number
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "PRUNED", "FAIL", "FAIL"]  # a NaN value is a failure
    pruned = json.loads((tmp_path / "pruned" / "status.json").read_text())
    assert (pruned["epochs"], pruned["metrics"]) == (2, {"val/acc_best": 0.4})
    assert search.stop_reason is None  # trial-dependent failures: 2 of 4, at the rate allowed
    assert study.trials[2].user_attrs["error"] == "RuntimeError: CUDA out of memory"
    killed = study.ask()  # its process killed before it wrote a status.json
    search.tell(study, killed, None, tmp_path / "killed", [])
    written = json.loads((tmp_path / "killed" / "status.json").read_text())
    assert (written["status"], written["trial"]) == ("failed", 4)  # summary.csv says so
    assert "without a status.json" in written["error"]


def more_space(config: Any, trial: optuna.trial.Trial) -> None:
    """A custom_search_space: a key suggested by code, here one that depends on the config."""
    trial.suggest_categorical("model.net.name", [config.net_choice])


def test_a_trial_gets_its_values_the_fixed_ones_and_the_way_to_its_study(tmp_path: Path) -> None:
    search = search_in(
        tmp_path,
        {"net_choice": "lenet"},
        storage=str(tmp_path / "it's.journal"),
        max_failure_rate=1.0,
        custom_search_space=f"{__name__}.more_space",
    )
    space, fixed = search_space(["data.batch_size=choice(32)", "model=cifar_quick"])
    study = search.open_study(space)
    overrides = search.trial_overrides(study, study.ask(), space, fixed)
    assert overrides == [
        "data.batch_size=32",
        "model.net.name=lenet",
        "model=cifar_quick",
        "+callbacks/sweep@callbacks=optuna_pruning",
        f"callbacks.optuna_pruning.storage='{tmp_path}/it\\'s.journal'",
        "callbacks.optuna_pruning.study_name='s'",
        "callbacks.optuna_pruning.trial=0",
    ]


def test_a_multi_objective_trial_marks_its_start_but_reports_nothing(tmp_path: Path) -> None:
    """No intermediate values exist for several objectives: the callback still marks when the
    trial's training starts, so a NaN line in training is no reason to stop the search."""
    search = search_in(
        tmp_path,
        {},
        storage=str(tmp_path / "multi.journal"),
        max_failure_rate=1.0,
        direction=["maximize", "minimize"],
    )
    space, fixed = search_space(["data.batch_size=choice(32)"])
    study = search.open_study(space)
    overrides = search.trial_overrides(study, study.ask(), space, fixed)
    assert "+callbacks/sweep@callbacks=optuna_pruning" in overrides
    assert overrides[-1] == "callbacks.optuna_pruning.report=false"
