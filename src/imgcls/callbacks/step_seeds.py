"""Randomness that is a function of (seed, step), so a resumed run draws what the uninterrupted
one would have drawn: device-side augmentation, MixUp / CutMix and dropout.

The global RNGs are re-seeded from (seed, global step) just before each training batch is
augmented on the device (`ImageDataModule.on_before_batch_transfer`, which this callback switches
on): no hook order, loader iterator or sanity check between a restore and the first batch can
shift the random stream. Data order is a function of (seed, epoch) (EpochSeededRandomSampler).
Reseeding costs about 10 microseconds a step.
"""

import lightning as L
from lightning.pytorch.callbacks import Callback


class StepSeeds(Callback):
    def __init__(self, seed: int | None) -> None:
        """`seed`: the run's seed; None turns the callback off."""
        self.seed = seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.datamodule is not None and hasattr(trainer.datamodule, "step_seed"):
            trainer.datamodule.step_seed = self.seed
