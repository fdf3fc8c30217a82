"""Seeding every RNG a training step draws from, from (seed, step), cheaply."""

import random

import numpy as np
import torch


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """Distinct in the low 32 bits (all the CPU generator keeps) for every rank at a step."""
    return ((seed * 1_000_003 + step) * 1_000_033 + rank) % (2**63)


def reseed(seed: int, step: int, rank: int = 0) -> None:
    """The CPU generator, the current CUDA device's (where CUDA is in use), Python's and NumPy's:
    ~10 us, where `torch.manual_seed` (every device type, every GPU) takes ~100 us on a CPU.
    Each `rank` draws its own stream: the copies of one image that repeated augmentation sends
    to several ranks are augmented (and mixed, and dropped out) differently."""
    value = step_seed(seed, step, rank)
    torch.default_generator.manual_seed(value)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed(value)
    random.seed(value)
    np.random.seed(value % 2**32)
