"""callbacks/hparams_tab.py: one HParams entry per run, written at the start of fitting: the
hyperparameters the run logged (None values left out) beside the names of the metrics whose
scalar curves give the tab its values; nothing logged twice, no scalar of its own."""

from pathlib import Path
from types import SimpleNamespace

from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from imgcls.callbacks.hparams_tab import HparamsTab
from tests.callbacks.tiny import TinyClassifier, loader, tiny_trainer

START = "_hparams_/session_start_info"
EXPERIMENT = "_hparams_/experiment"


def summaries(folder: Path) -> list:
    """Every summary value in the event files under `folder`, in order."""
    return [
        value
        for path in sorted(folder.rglob("events.out.tfevents.*"))
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
    ]


def tensorboard(folder: Path) -> TensorBoardLogger:
    return TensorBoardLogger(folder, name="", version="", default_hp_metric=False)


def test_the_entry_pairs_the_logged_config_with_the_metric_names(tmp_path: Path) -> None:
    logger = tensorboard(tmp_path)
    logger.log_hyperparams({"optimizer/lr": 0.05, "model/net/name": "tiny", "data/root": None})
    trainer = tiny_trainer(
        logger=logger, callbacks=[HparamsTab(metrics=["val/acc_best", "test/acc"])]
    )
    trainer.fit(TinyClassifier(), loader())
    values = summaries(tmp_path)
    tags = [value.tag for value in values]
    assert tags.count(START) == 1
    assert tags.count(EXPERIMENT) == 1
    assert not {"val/acc_best", "test/acc"} & set(tags)  # names only: the run logs the curves

    content = {value.tag: value.metadata.plugin_data.content for value in values}
    start = plugin_data_pb2.HParamsPluginData.FromString(content[START]).session_start_info
    assert start.hparams["optimizer/lr"].number_value == 0.05
    assert start.hparams["model/net/name"].string_value == "tiny"
    assert "data/root" not in start.hparams
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content[EXPERIMENT]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["val/acc_best", "test/acc"]


def test_no_entry_without_hyperparameters_or_off_rank_zero(tmp_path: Path) -> None:
    trainer = tiny_trainer(logger=tensorboard(tmp_path / "none"), callbacks=[HparamsTab()])
    trainer.fit(TinyClassifier(), loader())
    assert START not in {value.tag for value in summaries(tmp_path / "none")}

    logger = tensorboard(tmp_path / "rank1")
    logger.log_hyperparams({"optimizer/lr": 0.05})
    HparamsTab().on_fit_start(SimpleNamespace(is_global_zero=False, loggers=[logger]), None)
    logger.finalize("success")
    assert START not in {value.tag for value in summaries(tmp_path / "rank1")}
