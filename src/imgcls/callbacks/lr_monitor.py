"""Lightning's LearningRateMonitor, without a blocking copy to the device on every logged step.

Lightning's also puts each learning rate, momentum and weight decay it logs into
`trainer.callback_metrics`, made a tensor on the training device: `torch.tensor(value,
device=cuda)` is a copy from pageable memory that waits for the device's queue, several per
logged step (one per value of each param group). These values are host floats; here they stay
on the host. Everything else (names, intervals, what goes to the loggers) is Lightning's.
"""

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor as LightningLearningRateMonitor


class LearningRateMonitor(LightningLearningRateMonitor):
    def _extract_stats(self, trainer: Trainer, interval: str) -> dict[str, float]:
        # Lightning 2.6's body, but for the last statement (tests/test_lightning_hooks.py fails
        # if Lightning's changes)
        latest_stat = {}
        scheduler_keys, with_scheduler, with_scheduler_types = self._find_names_from_schedulers(
            trainer.lr_scheduler_configs
        )
        self._remap_keys(scheduler_keys)
        for name, config in zip(scheduler_keys, trainer.lr_scheduler_configs, strict=False):
            if interval in [config.interval, "any"]:
                latest_stat.update(self._get_optimizer_stats(config.scheduler.optimizer, name))
        optimizer_keys, without_scheduler = self._find_names_from_optimizers(
            trainer.optimizers,
            seen_optimizers=with_scheduler,
            seen_optimizer_types=with_scheduler_types,
        )
        self._remap_keys(optimizer_keys)
        for optimizer, names in zip(without_scheduler, optimizer_keys, strict=False):
            latest_stat.update(self._get_optimizer_stats(optimizer, names))
        trainer.callback_metrics.update({name: torch.tensor(v) for name, v in latest_stat.items()})
        return latest_stat
