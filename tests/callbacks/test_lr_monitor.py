"""callbacks/lr_monitor.py: Lightning's LearningRateMonitor (the same names, values and logged
points), with the values it keeps in trainer.callback_metrics on the host, whatever device
trains."""

from types import SimpleNamespace

import torch
from lightning.pytorch.callbacks import LearningRateMonitor as LightningLearningRateMonitor
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch import nn

from imgcls.callbacks.lr_monitor import LearningRateMonitor
from tests.callbacks.tiny import RecordingLogger, TinyClassifier, loader, tiny_trainer


def trainer_on(device: str) -> SimpleNamespace:
    """What the monitor reads of a trainer training on `device`: one SGD with two named param
    groups under a per-step schedule."""
    net = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(
        [
            {"params": [net.weight], "name": "backbone"},
            {"params": [net.bias], "lr": 0.5, "name": "head"},
        ],
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    return SimpleNamespace(
        lr_scheduler_configs=[LRSchedulerConfig(scheduler, interval="step")],
        optimizers=[optimizer],
        loggers=[RecordingLogger()],
        callback_metrics={},
        strategy=SimpleNamespace(root_device=torch.device(device)),
    )


def test_the_values_are_lightnings_and_stay_on_the_host() -> None:
    settings = {"log_momentum": True, "log_weight_decay": True}
    ours, theirs = LearningRateMonitor(**settings), LightningLearningRateMonitor(**settings)
    our_trainer, their_trainer = trainer_on("meta"), trainer_on("meta")
    ours.on_train_start(our_trainer)
    theirs.on_train_start(their_trainer)
    stats = ours._extract_stats(our_trainer, "step")
    assert stats == theirs._extract_stats(their_trainer, "step")
    assert stats == {
        "lr-SGD/backbone": 0.05,
        "lr-SGD/head": 0.25,
        "lr-SGD/backbone-momentum": 0.9,
        "lr-SGD/head-momentum": 0.9,
        "lr-SGD/backbone-weight_decay": 1e-4,
        "lr-SGD/head-weight_decay": 1e-4,
    }
    assert ours.lrs == theirs.lrs == {"lr-SGD/backbone": [0.05], "lr-SGD/head": [0.25]}
    # Lightning copies each value to the training device (a wait per value on a GPU): ours not
    assert {v.device.type for v in their_trainer.callback_metrics.values()} == {"meta"}
    kept = our_trainer.callback_metrics
    assert kept.keys() == stats.keys()
    for name, value in kept.items():
        assert value.device.type == "cpu"
        assert value.item() == torch.tensor(stats[name]).item()


def test_a_per_step_schedule_is_logged_at_every_step() -> None:
    logger = RecordingLogger()
    trainer = tiny_trainer(
        logger=logger,
        callbacks=[LearningRateMonitor()],
        limit_train_batches=3,
        log_every_n_steps=1,
    )
    trainer.fit(TinyClassifier(lr=1.0, schedule=lambda step: 0.5**step), loader())
    assert logger.points("lr-SGD") == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert trainer.callback_metrics["lr-SGD"].item() == 0.25
