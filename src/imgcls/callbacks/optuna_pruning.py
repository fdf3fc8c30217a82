"""A trial of an Optuna search reports to its study, and stops when the study's pruner says so.

The sweeper (hydra_plugins/imgcls_optuna_sweeper.py) adds this callback to every trial it
starts (`+callbacks/sweep@callbacks=optuna_pruning`, configs/callbacks/sweep/), naming the
study's storage, the study and the trial's number: the trial runs in its own process, perhaps on
another machine, and reaches its study only through the storage. A plain run never has it.

At every validation (the sanity check aside) the epochs reached are kept in the trial
(summary.csv shows them) and the optimized metric is reported, its step the number of
validations before it: the epoch where a run validates once an epoch, and each of an epoch's
validations its own step under `trainer.val_check_interval` < 1 (Optuna keeps only the first
value reported for a step). The count travels in checkpoints, so a resumed trial goes
on from it. If the pruner then prunes, `optuna.TrialPruned` is raised at once, on every DDP rank
alike (rank 0 decides, the others hear it by broadcast, as they hear a metric that was not
logged): the run keeps its dir and records itself `pruned` (run/record.py). Optuna is imported
only here, in trials.
"""

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from imgcls.reports.optuna_study import open_storage
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)
# the user attribute that marks a trial whose training began (run/optuna_search.py reads it:
# an error before it that names no searched key is one no trial can escape)
TRAINING_STARTED = "training_started"
# the user attribute holding the epochs a trial reached (summary.csv's column): counted here,
# as validations need not be one an epoch
EPOCHS_REACHED = "epochs"


def load_trial(storage: str, study_name: str, number: int, pruner: Any = None) -> Any:
    """The running trial `number` of the study, able to report and to ask its pruner (none:
    Optuna's NopPruner, where Optuna would put its default median pruner)."""
    import optuna

    kept = open_storage(storage)
    pruner = pruner if pruner is not None else optuna.pruners.NopPruner()
    study = optuna.load_study(study_name=study_name, storage=kept, pruner=pruner)
    study_id = kept.get_study_id_from_name(study_name)
    trial_id = kept.get_trial_id_from_study_id_trial_number(study_id, number)
    return optuna.trial.Trial(study, trial_id)


class OptunaPruning(Callback):
    def __init__(
        self,
        storage: str,
        study_name: str,
        trial: int,
        monitor: str,
        pruner: Any = None,
        report: bool = True,
    ) -> None:
        """`report`: the metric to the study at each validation (a multi-objective study has
        no intermediate values: its trials only mark when their training starts)."""
        self.report = report
        self.storage = storage
        self.study_name = study_name
        self.number = trial
        self.monitor = monitor
        self.pruner = pruner
        self._trial: Any = None
        self.validations = 0  # reported so far: the next report's step
        self.epochs_kept = 0  # the epochs reached, as the trial holds them
        self.restored = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero and self._trial is None:
            self._trial = load_trial(self.storage, self.study_name, self.number, self.pruner)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._trial is not None:
            self._trial.set_user_attr(TRAINING_STARTED, True)

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations, self.restored = state_dict["validations"], True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A trial resumed from a checkpoint that kept no count (written before it was kept)
        had reported once an epoch: it goes on from its epochs."""
        if not self.restored:
            self.validations = trainer.current_epoch

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epochs = trainer.current_epoch + 1
        if self._trial is not None and epochs != self.epochs_kept:  # once an epoch, not per
            self._trial.set_user_attr(EPOCHS_REACHED, epochs)  # validation: a storage write
            self.epochs_kept = epochs
        if not self.report:
            return
        step, self.validations = self.validations, self.validations + 1
        pruned = missing = ""
        if self._trial is not None:
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                missing = ", ".join(sorted(trainer.callback_metrics)) or "none"
            else:
                value = float(value)  # once per validation, outside any step
                self._trial.report(value, step)
                if self._trial.should_prune():
                    at = f"validation {step + 1}, " if step != trainer.current_epoch else ""
                    pruned = f"pruned after {at}{epochs} epochs at {self.monitor}={value:.4g}"
        pruned, missing = trainer.strategy.broadcast((pruned, missing))
        if missing:
            raise UserError(
                f"optimized_metric={self.monitor!r} was not logged at validation, so the "
                f"search cannot prune on it. Logged metrics: {missing}"
            )
        if pruned:
            import optuna

            log.info(f"Trial {self.number} {pruned}")
            raise optuna.TrialPruned(pruned)
