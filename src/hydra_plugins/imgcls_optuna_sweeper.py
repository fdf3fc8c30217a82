"""imgcls's Optuna sweeper (`hparams_search=...`): hydra-optuna-sweeper's, but a search whose
every trial failed returns like any other sweep, so `summary.csv` is written and the exit says
how many jobs failed, instead of the plugin's traceback at its end ("No trials are completed
yet"). It lives in the `hydra_plugins` namespace because Hydra loads sweepers only from there.
"""

import logging

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as PluginSweeper

log = logging.getLogger(__name__)


class OptunaSweeper(PluginSweeper):
    def sweep(self, arguments: list[str]) -> None:
        try:
            return super().sweep(arguments)
        except ValueError as err:
            if "No trials are completed" not in str(err):
                raise
            log.error("No trial of the search completed: summary.csv says why each failed.")
            return None
