"""Randomness that is a function of (seed, step), so a resumed run draws what the uninterrupted
one would have drawn: device-side augmentation, MixUp / CutMix and dropout.

The global RNGs are re-seeded from (seed, global step) just before each training batch is
augmented on the device (`ImageDataModule.on_before_batch_transfer`, which this callback switches
on): no hook order, loader iterator or sanity check between a restore and the first batch can
shift the random stream. Data order is a function of (seed, epoch) (EpochSeededRandomSampler).
Reseeding costs about 10 microseconds a step.
"""

import random

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def reseed(seed: int, step: int) -> None:
    """The CPU generator, the current CUDA device's (where CUDA is in use), Python's and NumPy's:
    ~10 us, where `torch.manual_seed` (every device type, every GPU) takes ~100 us on a CPU."""
    value = step_seed(seed, step)
    torch.default_generator.manual_seed(value)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed(value)
    random.seed(value)
    np.random.seed(value % 2**32)


class StepSeeds(Callback):
    def __init__(self, seed: int | None) -> None:
        """`seed`: the run's seed; None turns the callback off."""
        self.seed = seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.datamodule is not None and hasattr(trainer.datamodule, "step_seed"):
            trainer.datamodule.step_seed = self.seed
