"""callbacks/optuna_pruning.py: a trial reports the monitored metric to its study (in a journal
file, as a trial process reaches it) at every validation, stops at the validation its pruner
prunes, and its run records itself `pruned`, not failed."""

import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from omegaconf import OmegaConf

from imgcls.callbacks.optuna_pruning import (
    EPOCHS_REACHED,
    TRAINING_STARTED,
    OptunaPruning,
    load_trial,
)
from imgcls.reports.optuna_study import open_storage
from imgcls.run import record
from imgcls.run.record import run_recorded
from imgcls.utils.errors import UserError
from tests.callbacks.tiny import TinyClassifier, loader, tiny_trainer


def journal_trial(tmp_path: Path) -> tuple[str, optuna.Study, optuna.trial.Trial]:
    storage = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="s", storage=open_storage(storage), direction="maximize")
    return storage, study, study.ask()


def test_a_trial_reports_each_epoch_and_stops_at_the_one_its_pruner_prunes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, study, trial = journal_trial(tmp_path)
    callback = OptunaPruning(
        storage, "s", trial.number, "val/acc", pruner=optuna.pruners.ThresholdPruner(lower=0.5)
    )
    trainer = tiny_trainer(callbacks=[callback], max_epochs=4, num_sanity_val_steps=1)

    def train() -> float:
        trainer.fit(TinyClassifier(val_scores=[0.9, 0.3, 0.8, 0.9]), loader(), loader())
        return 1.0

    monkeypatch.setattr(record, "in_multirun", lambda: True)
    run = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "run")}, "train": True})
    assert run_recorded(run, train) is None
    assert trainer.current_epoch == 1  # stopped at the validation that pruned, not at the end
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "pruned"
    assert status["detail"] == "pruned after 2 epochs at val/acc=0.3"
    kept = study.trials[trial.number]  # the study, as the sweeper reads it back
    assert kept.intermediate_values == pytest.approx({0: 0.9, 1: 0.3})  # no sanity check
    assert kept.user_attrs[TRAINING_STARTED] is True


class ScoredEachValidation(TinyClassifier):
    """val/acc from `val_scores` by validation, not by epoch."""

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.log("val/acc", self.val_scores.pop(0))


def test_each_validation_of_an_epoch_is_its_own_step_and_the_count_is_resumed(
    tmp_path: Path,
) -> None:
    """trainer.val_check_interval=0.5: two reports an epoch, steps 0, 1, 2 (Optuna would keep
    only the first of an epoch reported twice), pruned at the third; a callback restored from
    a checkpoint's state goes on counting from where it was."""
    storage, study, trial = journal_trial(tmp_path)
    pruner = optuna.pruners.ThresholdPruner(lower=0.5)
    callback = OptunaPruning(storage, "s", trial.number, "val/acc", pruner=pruner)
    trainer = tiny_trainer(
        callbacks=[callback], max_epochs=3, limit_train_batches=4, val_check_interval=0.5
    )
    model = ScoredEachValidation(val_scores=[0.9, 0.8, 0.3, 0.9])
    with pytest.raises(optuna.TrialPruned, match="pruned after validation 3, 2 epochs at"):
        trainer.fit(model, loader(), loader())
    assert study.trials[trial.number].intermediate_values == pytest.approx({0: 0.9, 1: 0.8, 2: 0.3})
    assert study.trials[trial.number].user_attrs[EPOCHS_REACHED] == 2  # not 3 validations
    resumed = OptunaPruning(storage, "s", trial.number, "val/acc")
    resumed.load_state_dict(callback.state_dict())
    resumed.on_fit_start(SimpleNamespace(current_epoch=1), None)
    assert resumed.validations == 3
    older = OptunaPruning(storage, "s", trial.number, "val/acc")  # a checkpoint without a count
    older.on_fit_start(SimpleNamespace(current_epoch=2), None)
    assert older.validations == 2  # it had reported once an epoch


def test_a_metric_the_run_does_not_log_is_one_line(tmp_path: Path) -> None:
    storage, _, trial = journal_trial(tmp_path)
    callback = OptunaPruning(storage, "s", trial.number, "val/acc_bestt")
    trainer = tiny_trainer(callbacks=[callback])
    with pytest.raises(UserError, match=r"'val/acc_bestt' was not logged.*: val/acc"):
        trainer.fit(TinyClassifier(val_scores=[0.5]), loader(), loader())


def test_with_no_pruner_a_trial_is_never_pruned(tmp_path: Path) -> None:
    """hydra.sweeper.pruner=null: no pruning, where Optuna would default to a median pruner."""
    storage, _, trial = journal_trial(tmp_path)
    assert isinstance(load_trial(storage, "s", trial.number).study.pruner, optuna.pruners.NopPruner)
