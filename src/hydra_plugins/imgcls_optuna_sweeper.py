"""imgcls's Optuna sweeper (`hparams_search=...`, `override /hydra/sweeper: optuna`), on Optuna 4's
ask-and-tell API. It takes the config hydra-optuna-sweeper took (`params` in its grammar,
`sampler`, `direction`, `storage`, `study_name`, `n_trials`, `n_jobs`, `max_failure_rate`,
`custom_search_space`), plus `pruner`. The search itself is imgcls/run/optuna_search.py.

It lives in the `hydra_plugins` namespace because Hydra finds sweepers (and their ConfigStore
entries) only there; Hydra imports this module at the start of every command, so it imports
nothing heavy: Optuna is loaded when a search starts.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.imgcls_optuna_sweeper.OptunaSweeper"
    defaults: list[Any] = field(
        default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": None}]
    )
    # an Optuna sampler by _target_ (hydra/sweeper/sampler=tpe|random|cmaes|nsgaii|grid)
    sampler: Any = MISSING
    # maximize | minimize, or a list of them (one per value the task returns)
    direction: Any = "minimize"
    # null: a journal file in the sweep dir; a path ending in .journal (Optuna's journal
    # storage, for machines sharing a file system); or a database URL (sqlite:///study.db)
    storage: str | None = None
    # the study kept in `storage`: the same storage and name continue it
    study_name: str | None = None
    n_trials: int = 20
    # trials at once: one process each on this machine (the launcher's own way under another
    # launcher, e.g. submitit's jobs)
    n_jobs: int = 1
    # the search stops once more than this share of its finished trials failed
    max_failure_rate: float = 0.0
    # an Optuna pruner by _target_ (hydra/sweeper/pruner=median|percentile|hyperband|threshold;
    # null: none); every trial reports the optimized metric each epoch
    pruner: Any = None
    # key: a value in the sweeper grammar: choice(), range(), interval(), tag(log, ...)
    params: dict[str, Any] | None = None
    # a function (config, trial) that suggests more parameters, as a dotted path
    custom_search_space: str | None = None


# samplers by name; any other is named by its _target_ in hydra.sweeper.sampler
SAMPLERS = {
    "tpe": "optuna.samplers.TPESampler",
    "random": "optuna.samplers.RandomSampler",
    "cmaes": "optuna.samplers.CmaEsSampler",
    "nsgaii": "optuna.samplers.NSGAIISampler",
    "grid": "optuna.samplers.GridSampler",  # its grid is the search space, filled in at start
}

# pruners by name, with the arguments worth setting from the command line
PRUNERS = {
    "median": {
        "_target_": "optuna.pruners.MedianPruner",
        "n_startup_trials": 5,
        "n_warmup_steps": 0,
    },
    "percentile": {
        "_target_": "optuna.pruners.PercentilePruner",
        "percentile": 25.0,
        "n_startup_trials": 5,
        "n_warmup_steps": 0,
    },
    "hyperband": {
        "_target_": "optuna.pruners.HyperbandPruner",
        "min_resource": 1,
        "max_resource": "auto",
        "reduction_factor": 3,
    },
    "threshold": {
        "_target_": "optuna.pruners.ThresholdPruner",
        "lower": None,
        "upper": None,
        "n_warmup_steps": 0,
    },
}

store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="imgcls")
for _name, _target in SAMPLERS.items():
    _node: dict[str, Any] = {"_target_": _target, "seed": None}
    if _name == "grid":
        _node = {"_target_": _target, "_partial_": True, "seed": None}
    store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="imgcls")


class OptunaSweeper(Sweeper):
    """What Hydra calls: `setup` once, then `sweep` with the command line's overrides."""

    def __init__(self, **settings: Any) -> None:
        """`settings`: OptunaSweeperConf's fields, handed to the search (which names each)."""
        self.settings = settings

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        from imgcls.run.optuna_search import OptunaSearch

        OptunaSearch(
            config=self.config,
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            launcher=self.launcher,
            **self.settings,
        ).run(arguments)


for _name, _node in PRUNERS.items():
    store.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="imgcls")
