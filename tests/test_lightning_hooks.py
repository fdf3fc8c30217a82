"""The private Lightning names imgcls relies on where Lightning has no public way: each test
fails, loudly, on a Lightning version that renames one (then the owning module needs updating).

- utils/ddp_hydra.py replaces the launcher's Hydra child command and its process observer;
- callbacks/nonfinite.py reads ModelCheckpoint's step interval.
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
