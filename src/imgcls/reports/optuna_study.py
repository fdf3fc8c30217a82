"""An Optuna search's study: where it is kept, the study of a sweep dir, and its figures as PNGs
beside summary.csv.

A study is kept in a storage named by text (`hydra.sweeper.storage`): a path ending in
`.journal` is a journal file (Optuna's JournalFileBackend: processes and machines sharing a file
system share it), anything else a database URL (`sqlite:///study.db`, `postgresql://...`). The
sweeper, each trial's pruning callback and notebooks/02_compare_sweep.ipynb open it alike.

Figures:

- optimization_history.png: each trial's value and the best so far, by trial number
- param_importances.png: how much each searched key explains the value (fANOVA)
- parallel_coordinate.png: every completed trial's parameters as one line, coloured by value

Drawn with Optuna's matplotlib versions (headless, the Agg backend). A figure the study cannot
have yet (importances need two completed trials that differ) is skipped with one line; a search
never fails on its figures. The notebook draws them, and the trials' learning curves, from the
study.
"""

import warnings
from pathlib import Path
from typing import Any

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from imgcls.utils.logging import get_logger

log = get_logger(__name__)
FIGURES = ("optimization_history", "param_importances", "parallel_coordinate")
# the overrides the Optuna sweeper gives each trial: the pruning callback's group, and its key,
# under which the trial's config names its study
PRUNING_GROUP = "+callbacks/sweep@callbacks=optuna_pruning"
PRUNING_KEY = "callbacks.optuna_pruning"
STUDY_OVERRIDES = (f"{PRUNING_KEY}.storage", f"{PRUNING_KEY}.study_name")


def open_storage(spec: str) -> Any:
    """A study storage from its text: a `.journal` file, else a database URL."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if spec.endswith(".journal"):
        return optuna.storages.JournalStorage(JournalFileBackend(spec))
    return optuna.storages.get_storage(spec)


def sweep_study(sweep_dir: str | Path) -> Any:
    """The study an Optuna sweep's trials reported to, as their overrides name it; None for a
    sweep that is not an Optuna search."""
    import optuna
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for overrides in sorted(Path(sweep_dir).glob("*/.hydra/overrides.yaml")):
        lines = yaml.safe_load(overrides.read_text()) or []
        given = {o.get_key_element(): o.value() for o in parser.parse_overrides(lines)}
        if all(key in given for key in STUDY_OVERRIDES):
            storage, name = (str(given[key]) for key in STUDY_OVERRIDES)
            return optuna.load_study(study_name=name, storage=open_storage(storage))
    return None


def write_study_plots(study: Any, folder: str | Path) -> list[Path]:
    """The figures of `study` (single-objective) in `folder`; returns those written."""
    import optuna
    from optuna.visualization import matplotlib as figures

    if len(study.directions) != 1:
        log.info("No study figures: they show one objective, this study has several.")
        return []
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return []
    written = []
    for name in FIGURES:
        path = Path(folder) / f"{name}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's matplotlib figures are "experimental"
                axes = getattr(figures, f"plot_{name}")(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            log.info(f"No {path.name}: {err}")
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written
