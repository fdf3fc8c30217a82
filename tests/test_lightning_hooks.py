"""The private Lightning names imgcls relies on where Lightning has no public way: each test
fails, loudly, on a Lightning version that renames one (then the owning module needs updating).

- run/ddp_hydra.py replaces the launcher's Hydra child command and its process observer;
- callbacks/nonfinite.py reads ModelCheckpoint's step interval;
- callbacks/lr_monitor.py repeats LearningRateMonitor._extract_stats with host values;
- callbacks/model_checkpoint.py reads ModelCheckpoint's last saved step;
- loggers.py replaces the CSV writer's check of an existing log dir;
- callbacks/preemption.py switches off the epoch loop's per-step broadcast of rank 0's SIGTERM
  and replaces the signal connector's SIGTERM notifier.
"""

import inspect
from pathlib import Path

from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies.launchers import subprocess_script as trainer_launcher


def test_the_launcher_hooks_ddp_hydra_replaces_exist() -> None:
    assert callable(trainer_launcher._hydra_subprocess_cmd)
    assert callable(fabric_launcher._hydra_subprocess_cmd)
    assert callable(trainer_launcher._launch_process_observer)
    observer = fabric_launcher._ChildProcessObserver
    assert {"main_pid", "child_processes"} <= set(inspect.signature(observer).parameters)
    assert callable(observer._terminate_all)
    source = inspect.getsource(trainer_launcher._SubprocessScriptLauncher)
    assert "_launch_process_observer(" in source  # still how the launcher starts its observer
    assert "_hydra_subprocess_cmd(" in source


def test_model_checkpoint_keeps_its_step_interval_where_nonfinite_reads_it() -> None:
    assert ModelCheckpoint(every_n_train_steps=7)._every_n_train_steps == 7


def test_the_tensorboard_writer_has_a_file_writer_for_the_hparams_tab(tmp_path: Path) -> None:
    writer = TensorBoardLogger(str(tmp_path)).experiment
    assert callable(writer.file_writer.add_summary)


def test_the_lr_monitor_body_imgcls_copies_is_still_lightnings() -> None:
    """callbacks/lr_monitor.py repeats LearningRateMonitor._extract_stats but for its last
    statement (a device tensor per value): on a Lightning that changes it, redo the copy, or drop
    it if Lightning keeps the values on the host."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    source = inspect.getsource(LearningRateMonitor._extract_stats)
    for line in (
        "self._find_names_from_schedulers(trainer.lr_scheduler_configs)",
        'if interval in [config.interval, "any"]:',
        "current_stat = self._get_optimizer_stats(opt, name)",
        "self._find_names_from_optimizers(",
        "torch.tensor(value, device=trainer.strategy.root_device)",
    ):
        assert line in source, line
    assert source.count("\n") < 35  # nothing new added in between


def test_the_checkpoint_and_csv_internals_imgcls_relies_on_are_there(tmp_path: Path) -> None:
    """callbacks/model_checkpoint.py reads the step Lightning last saved at; loggers.py replaces
    the CSV writer's check that deletes an existing metrics.csv."""
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    assert ModelCheckpoint()._last_global_step_saved == 0
    source = inspect.getsource(ExperimentWriter.__mro__[1]._check_log_dir_exists)
    assert "rm_file(self.metrics_file_path)" in source  # what ours leaves out
    assert "_check_log_dir_exists()" in inspect.getsource(ExperimentWriter.__mro__[1].__init__)


def test_the_ema_callback_internals_imgcls_sets_are_there() -> None:
    """callbacks/ema.py builds EMAWeightAveraging's averaged model itself (HostCountedEMA)."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    ema = EMAWeightAveraging(decay=0.9)
    assert {"_average_model", "_device", "_use_buffers"} <= set(vars(ema))
    assert "self._average_model" in inspect.getsource(EMAWeightAveraging.on_train_batch_end)


def test_the_per_step_sigterm_broadcast_preemption_replaces_is_still_called_by_name() -> None:
    """callbacks/preemption.py sets `_broadcast_sigterm_tensor` on the fit loop's epoch loop to
    a no-op (it reads a device value back at every step); on a Lightning that renames it, the
    per-step wait would silently come back."""
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    assert callable(_TrainingEpochLoop._broadcast_sigterm_tensor)
    assert "self._broadcast_sigterm_tensor()" in inspect.getsource(_TrainingEpochLoop.advance)
    # and the SIGTERM notifier it replaces with its mark is read when the handlers are installed
    assert "self._sigterm_notifier_fn" in inspect.getsource(
        _SignalConnector.register_signal_handlers
    )


def test_litdata_still_builds_its_object_store_client_from_the_options_shards_extend() -> None:
    """data/sources/shards.py adds allow_http to LitData's obstore client options (an http endpoint,
    a local MinIO or the tests' server, fails without it)."""
    from litdata.streaming import downloader

    import imgcls.data.sources.shards  # noqa: F401  (sets it)

    assert downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] is True
    assert "client_options=_OBSTORE_CLIENT_OPTIONS" in inspect.getsource(downloader)


def test_the_epoch_loop_decisions_checkpointing_and_preemption_ask_are_there() -> None:
    """callbacks/model_checkpoint.py (`validation_follows`, `epoch_ends_after`), used by
    callbacks/preemption.py too, ask Lightning's epoch loop its own decisions by name."""
    from lightning.pytorch.loops.fit_loop import _FitLoop
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

    assert callable(_TrainingEpochLoop._should_check_val_fx)
    assert isinstance(_TrainingEpochLoop._is_training_done, property)
    assert isinstance(_FitLoop._can_stop_early, property)
    assert "self._data_fetcher" in inspect.getsource(_FitLoop.setup_data)
    assert "self._should_check_val_fx(data_fetcher)" in inspect.getsource(
        _TrainingEpochLoop.on_advance_end
    )
