"""Optuna searches (`hparams_search=...`) that go on where a kept study stopped:
`ContinuingTPESampler` is TPE whose random draws follow from (seed, the trials already in the
study), so a study kept in SQLite and resumed draws new points, where a seeded sampler would
start its sequence again and repeat the first trials. (The sweeper that ends an all-failed
search with its summary is src/hydra_plugins/imgcls_optuna_sweeper.py: Hydra loads sweepers
from that namespace only.)
"""

from typing import Any

import numpy as np
from optuna.samplers import RandomSampler, TPESampler

from imgcls.utils.logging import get_logger

log = get_logger(__name__)


class ContinuingTPESampler(TPESampler):
    def __init__(self, *args: Any, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, seed=seed, **kwargs)
        self._seed = seed
        self._continued = False

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        """Called as each trial starts; at the first in this process, reseeds from the study."""
        if not self._continued:
            self._continued = True
            earlier = len(study.get_trials(deepcopy=False)) - 1  # this trial is listed too
            if self._seed is not None and earlier > 0:
                # TPESampler's own generators (optuna 2.x): its draws and its start-up sampler's
                self._rng = np.random.RandomState(self._seed + earlier)
                self._random_sampler = RandomSampler(seed=self._seed + earlier)
                log.info(f"The study has {earlier} trials: the sampler continues after them")
        return super().infer_relative_search_space(study, trial)
