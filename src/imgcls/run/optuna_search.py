"""An Optuna search under Hydra (`hparams_search=...`): what hydra_plugins/imgcls_optuna_sweeper.py
runs, on Optuna 4's ask-and-tell API.

- The search space is `hydra.sweeper.params` plus the command line's sweeps, in the grammar of
  Hydra's sweepers: `choice(...)`, `range(...)`, `interval(...)`, `tag(log, interval(...))`; plain
  values are passed to every trial.
- The study lives in `hydra.sweeper.storage`: a database URL or a `*.journal` file; with none, a
  journal file in the sweep dir. The same storage and `study_name` continue a study, and several
  sweep processes (machines) on one study each run trials of their own.
- Each trial is a job: its parameters as overrides, and the pruning callback
  (callbacks/optuna_pruning.py) pointed at its study and trial number. `n_jobs` trials run at
  once, one process each (run/trial_processes.py), or through the configured launcher (submitit).
- How a trial ended is its run's status.json (run/record.py): completed (its value told to the
  study), pruned, or failed. The sweeper adds the trial's number and the epochs it trained there,
  for summary.csv.
- A failure no trial can escape ends the search after that trial: a UserError before training
  that names none of the searched keys or values (the data missing, a config mistake). Failures
  that depend on the trial (a NaN, out of memory, a bad combination) stay part of the search,
  up to `max_failure_rate`.
- At the end: optimization_results.yaml, and the study's figures in the sweep dir
  (reports/optuna_study.py).

`ContinuingTPESampler` is TPE whose random draws for trial n follow from (seed, n): a kept study
resumed, or two processes sharing one, draw new points, where a seeded TPESampler would start
its sequence again in every process and repeat the first trials.
"""

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import RandomSampler, TPESampler
from optuna.trial import TrialState

from imgcls.callbacks.optuna_pruning import EPOCHS_REACHED, TRAINING_STARTED
from imgcls.reports.optuna_study import (
    PRUNING_GROUP,
    PRUNING_KEY,
    open_storage,
    write_study_plots,
)
from imgcls.run.trial_processes import TrialProcesses
from imgcls.utils.atomic_save import written_whole
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.paths import STATUS_FILE

log = get_logger(__name__)
# the study's file in the sweep dir when hydra.sweeper.storage is null
DEFAULT_JOURNAL = "optuna.journal"
RESULTS_FILE = "optimization_results.yaml"


class ContinuingTPESampler(TPESampler):
    """TPE whose draws for trial n come from (seed, n): distinct across resumes and processes,
    the same for the same study history."""

    def __init__(self, *args: Any, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, seed=seed, **kwargs)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self._base_seed is not None:
            seed = int(np.random.SeedSequence([self._base_seed, trial.number]).generate_state(1)[0])
            self._rng = optuna.samplers._lazy_random_state.LazyRandomState(seed)
            self._random_sampler = RandomSampler(seed=seed)
        super().before_trial(study, trial)


# -- the search space ---------------------------------------------------------------------------
def _choices(override: Override) -> list[Any]:
    choices = list(override.sweep_iterator(transformer=Transformer.encode))
    for choice in choices:
        if not isinstance(choice, str | int | float | bool | type(None)):
            raise UserError(
                f"{override.input_line}: a choice is a str, int, float, bool or null, "
                f"not {type(choice).__name__}"
            )
    return choices


def distribution_of(override: Override) -> BaseDistribution | str:
    """The Optuna distribution of one override, or its value as text if it sweeps nothing."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep():
        assert isinstance(value, ChoiceSweep)
        return CategoricalDistribution(_choices(override))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        if value.shuffle:
            return CategoricalDistribution(_choices(override))
        ends = (value.start, value.stop, value.step)
        if any(isinstance(end, float) for end in ends):
            # range's stop is exclusive; Optuna's high is inclusive
            count = math.ceil((value.stop - value.start) / value.step - 1e-9)
            high = value.start + (count - 1) * value.step
            return FloatDistribution(value.start, high, step=value.step)
        return IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(value.start, value.end, log=log_scale)
    raise UserError(f"{override.input_line}: the Optuna sweeper takes choice, range or interval")


def search_space(overrides: Sequence[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """(the distributions searched, the values every trial gets) from overrides in the grammar;
    a key given twice takes its last (the command line's over hydra.sweeper.params)."""
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element()
        distributions.pop(key, None)
        fixed.pop(key, None)
        value = distribution_of(override)
        if isinstance(value, BaseDistribution):
            distributions[key] = value
        else:
            fixed[key] = value
    return distributions, fixed


def grid_of(distributions: dict[str, BaseDistribution]) -> dict[str, list[Any]]:
    """GridSampler's grid: every value of each discrete distribution."""
    grid = {}
    for name, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution | FloatDistribution) and dist.step and not dist.log:
            count = round((dist.high - dist.low) / dist.step) + 1
            grid[name] = [dist.low + i * dist.step for i in range(count)]
        else:
            raise UserError(f"hydra.sweeper.params.{name}: a grid takes choice() or range() only")
    return grid


def suggest(trial: optuna.trial.Trial, name: str, dist: BaseDistribution) -> Any:
    """The trial's value of `name` from its distribution, by Optuna's public API."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def quoted(value: str) -> str:
    """`value` as a quoted string of the override grammar, where a backslash is literal except
    in a run of them before a quote (the closing one included): those are doubled."""

    def escaped(match: re.Match) -> str:
        return match.group(1) * 2 + ("\\'" if match.group(2) else "")

    return "'" + re.sub(r"(\\*)('|$)", escaped, value) + "'"


# -- how a trial ended --------------------------------------------------------------------------
def read_status(job_dir: Path) -> dict[str, Any]:
    path = job_dir / STATUS_FILE
    if not path.is_file():  # its process was killed before it could say
        return {"status": "failed", "error": "the trial ended without a status.json (killed?)"}
    return json.loads(path.read_text())


def names_the_trial(error: str, trial: optuna.trial.FrozenTrial | Any, keys: Sequence[str]) -> bool:
    """Whether an error message names a searched key or one of this trial's values."""
    values = [str(v) for v in trial.params.values()]
    return any(text and text in error for text in [*keys, *values])


def cannot_succeed(status: dict[str, Any], trial: Any, keys: Sequence[str]) -> bool:
    """A failure every other trial would meet too: a UserError (a mistake in data, files or the
    config) before training began, whose message names nothing the search varies."""
    error = status.get("error", "")
    return (
        status.get("status") == "failed"
        and error.startswith(f"{UserError.__name__}:")
        and not trial.user_attrs.get(TRAINING_STARTED)
        and not names_the_trial(error, trial, keys)
    )


def write_status(job_dir: Path, status: dict[str, Any]) -> None:
    """The trial's status.json, with the search's facts (its number, epochs) that summary.csv
    reads; where the trial's process was killed before writing one, the failure it was."""
    job_dir.mkdir(parents=True, exist_ok=True)
    with written_whole(job_dir / STATUS_FILE) as staged:  # summary.csv may be reading it
        staged.write_text(json.dumps(status, indent=2) + "\n")


class OptunaSearch:
    def __init__(
        self,
        *,
        config: DictConfig,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        launcher: Launcher,
        sampler: Any,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        pruner: Any = None,
        params: DictConfig | None = None,
        custom_search_space: str | None = None,
    ) -> None:
        if n_trials < 1 or n_jobs < 1:
            raise UserError(f"hydra.sweeper: n_trials={n_trials} and n_jobs={n_jobs} must be >= 1")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise UserError(f"hydra.sweeper.max_failure_rate={max_failure_rate}: from 0 to 1")
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.launcher = launcher
        self.sampler = sampler
        several = isinstance(direction, Sequence) and not isinstance(direction, str)
        self.directions = [str(d) for d in direction] if several else [str(direction)]
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.storage = self._storage_spec(storage)
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.pruner = pruner
        self.params = params
        self.extend_space = get_method(custom_search_space) if custom_search_space else None
        self.job_idx = 0
        self.finished: list[str] = []  # each finished trial's state, in this process
        self.stop_reason: str | None = None
        self.pending: dict[int, optuna.trial.Trial] = {}  # asked, not yet told, by job number

    def _storage_spec(self, storage: str | None) -> str:
        """The storage as the trials will open it: journal paths made absolute."""
        if storage is None:
            self.sweep_dir.mkdir(parents=True, exist_ok=True)
            return str(self.sweep_dir.resolve() / DEFAULT_JOURNAL)
        if storage.endswith(".journal"):
            path = Path(storage).expanduser().resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            return str(path)
        return storage

    # -- the study ------------------------------------------------------------------------------
    def open_study(self, distributions: dict[str, BaseDistribution]) -> optuna.Study:
        if getattr(self.sampler, "func", None) is optuna.samplers.GridSampler:  # a partial
            grid = grid_of(distributions)
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
        study = optuna.create_study(
            study_name=self.study_name,
            storage=open_storage(self.storage),
            sampler=self.sampler,
            pruner=self.pruner if self.pruner is not None else optuna.pruners.NopPruner(),
            directions=self.directions,
            load_if_exists=True,
        )
        kept = len(study.get_trials(deepcopy=False))
        log.info(
            f"Study {study.study_name!r} in {self.storage} ({kept} trials kept), sampler "
            f"{type(self.sampler).__name__}, pruner {type(study.pruner).__name__}, "
            f"{'/'.join(self.directions)}, {self.n_trials} trials, {self.n_jobs} at once"
        )
        return study

    def trial_overrides(
        self,
        study: optuna.Study,
        trial: optuna.trial.Trial,
        distributions: dict[str, BaseDistribution],
        fixed: dict[str, str],
    ) -> list[str]:
        for name, distribution in distributions.items():
            suggest(trial, name, distribution)
        if self.extend_space is not None:
            self.extend_space(self.config, trial)
        overrides = [f"{name}={value}" for name, value in trial.params.items()]
        overrides += [f"{name}={value}" for name, value in fixed.items()]
        overrides += [  # every trial marks when its training starts (cannot_succeed)
            PRUNING_GROUP,
            f"{PRUNING_KEY}.storage={quoted(self.storage)}",
            f"{PRUNING_KEY}.study_name={quoted(study.study_name)}",
            f"{PRUNING_KEY}.trial={trial.number}",
        ]
        if len(self.directions) > 1:  # intermediate values exist for one objective only
            overrides.append(f"{PRUNING_KEY}.report=false")
        return overrides

    # -- the loop -------------------------------------------------------------------------------
    def run(self, arguments: list[str]) -> None:
        params = [f"{k}={v}" for k, v in (self.params or {}).items()]
        distributions, fixed = search_space([*params, *arguments])
        study = self.open_study(distributions)
        keys = list(distributions)
        try:
            if self.n_jobs > 1 and type(self.launcher).__name__ == "BasicLauncher":
                self._run_in_processes(study, distributions, fixed, keys)
            else:
                self._run_in_batches(study, distributions, fixed, keys)
        finally:  # Ctrl-C, a launcher's error: the trials asked and never told end as failed
            for trial in self.pending.values():
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        if self.stop_reason:
            log.error(self.stop_reason)
        self.write_results(study)

    def _more(self, asked: int) -> bool:
        return asked < self.n_trials and self.stop_reason is None

    def _run_in_batches(self, study, distributions, fixed, keys) -> None:
        """Through Hydra's launcher, n_jobs trials a launch (submitit: n_jobs jobs at once)."""
        asked = 0
        while self._more(asked):
            count = min(self.n_jobs, self.n_trials - asked)
            trials = [study.ask() for _ in range(count)]
            self.pending = dict(enumerate(trials, self.job_idx))
            overrides = [self.trial_overrides(study, t, distributions, fixed) for t in trials]
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            asked += count
            for trial, ret in zip(trials, returns, strict=True):
                try:
                    value = ret.return_value
                except Exception:  # a job that raised past run/record.py: its status says
                    value = None
                self.tell(study, trial, value, Path(ret.hydra_cfg.hydra.runtime.output_dir), keys)
            self.pending = {}

    def _run_in_processes(self, study, distributions, fixed, keys) -> None:
        """n_jobs trials at once on this machine, one process each; a new trial starts as soon
        as one ends."""
        asked = 0
        trials = self.pending
        with TrialProcesses(
            self.n_jobs, self.hydra_context, self.task_function, self.config
        ) as processes:
            while self._more(asked) or processes.running:
                while self._more(asked) and processes.free:
                    trial = study.ask()
                    overrides = self.trial_overrides(study, trial, distributions, fixed)
                    trials[self.job_idx] = trial
                    processes.start(self.job_idx, overrides)
                    self.job_idx += 1
                    asked += 1
                job, value, job_dir = processes.wait_any()
                self.tell(study, trials.pop(job), value, job_dir, keys)

    def tell(
        self, study: optuna.Study, trial: optuna.trial.Trial, value: Any, job_dir: Path, keys
    ) -> None:
        """The trial's end to the study, its facts to its status.json; whether to go on."""
        status = read_status(job_dir)
        ended = status.get("status")
        values = self._values(value) if ended == "completed" else None
        if ended == "pruned":
            state = TrialState.PRUNED
        elif values is not None:
            state = TrialState.COMPLETE
        else:
            state = TrialState.FAIL
            error = status.get("error") or f"{ended}, with no value ({value!r})"
            trial.set_user_attr("error", error[:500])
        frozen = study.tell(trial, values=values, state=state, skip_if_finished=True)
        facts: dict[str, Any] = {"trial": trial.number}
        if EPOCHS_REACHED in frozen.user_attrs:
            facts["epochs"] = frozen.user_attrs[EPOCHS_REACHED]
        if state == TrialState.PRUNED and frozen.intermediate_values:
            # no metrics.json: the value it was pruned at
            last = frozen.intermediate_values[max(frozen.intermediate_values)]
            facts["metrics"] = {str(self.config.get("optimized_metric")): last}
        write_status(job_dir, status | facts)
        self.finished.append(state.name)
        said = values or status.get("detail") or status.get("error", "")
        log.info(f"Trial {trial.number} {state.name.lower()}: {said}")
        if state == TrialState.FAIL:
            if cannot_succeed(status, frozen, keys):
                self.stop_reason = (
                    f"The search stops: trial {trial.number} failed before training on a "
                    f"mistake no searched value causes, and every trial would. {status['error']}"
                )
            failed = self.finished.count("FAIL")
            if failed / len(self.finished) > self.max_failure_rate:
                self.stop_reason = self.stop_reason or (
                    f"The search stops: {failed} of {len(self.finished)} trials failed, more "
                    f"than hydra.sweeper.max_failure_rate={self.max_failure_rate}."
                )

    def _values(self, value: Any) -> list[float] | None:
        """The trial's values if they can be told, else None (a failed trial)."""
        try:
            values = [float(v) for v in (value if isinstance(value, list | tuple) else [value])]
        except (TypeError, ValueError):
            return None
        if len(values) != len(self.directions) or not all(map(math.isfinite, values)):
            return None
        return values

    # -- the end --------------------------------------------------------------------------------
    def write_results(self, study: optuna.Study) -> None:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            log.error("No trial of the search completed: summary.csv says how each ended.")
        elif len(self.directions) == 1:
            best = study.best_trial
            results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
            log.info(f"Best trial {best.number}: {best.value} with {best.params}")
        else:
            front = [{"params": t.params, "values": t.values} for t in study.best_trials]
            results = {"name": "optuna", "solutions": front}
            log.info(f"{len(front)} Pareto-optimal trials")
        if done:
            OmegaConf.save(OmegaConf.create(results), self.sweep_dir / RESULTS_FILE)
        write_study_plots(study, self.sweep_dir)
