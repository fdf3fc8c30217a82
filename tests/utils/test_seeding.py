"""utils/seeding.py: every RNG a step draws from (torch's, NumPy's, Python's) is a function of
(seed, step, rank), and every rank draws its own stream."""

import random

import numpy as np
import pytest
import torch

from imgcls.utils.seeding import reseed, step_seed


def draws() -> tuple[list[float], list[float], float]:
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), random.random()


def draws_after(seed: int, step: int, rank: int = 0) -> tuple[list[float], list[float], float]:
    draws()  # whatever was drawn before
    reseed(seed, step, rank)
    return draws()


@pytest.fixture(autouse=True)
def kept_rng_state():
    """Leave the generators as the test found them: later tests draw from them too."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    yield
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])


def test_the_draws_are_a_function_of_seed_step_and_rank() -> None:
    first = draws_after(12345, 10, rank=1)
    assert draws_after(12345, 10, rank=1) == first  # whatever came before
    for other in ((12345, 11, 1), (12346, 10, 1), (12345, 10, 0)):
        changed = draws_after(*other)
        for mine, theirs in zip(first, changed, strict=True):  # every generator moves
            assert mine != theirs, other


def test_the_draws_are_torchs_numpys_and_pythons_own_seeding() -> None:
    value = step_seed(7, 3, 2)
    reseed(7, 3, 2)
    ours = draws()
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)
    assert draws() == ours


def test_ranks_differ_in_the_low_32_bits_the_cpu_generators_keep() -> None:
    for seed in (0, 1, 12345, 2**31 - 1, 2**40):
        for step in (0, 1, 999, 10**7):
            low = {step_seed(seed, step, rank) % 2**32 for rank in range(256)}
            assert len(low) == 256, (seed, step)
    # so NumPy's generator, seeded with the low 32 bits, differs per rank too
    reseed(5, 5, 0)
    rank0 = np.random.rand(4).tolist()
    reseed(5, 5, 1)
    assert np.random.rand(4).tolist() != rank0


def test_step_seeds_are_valid_torch_seeds() -> None:
    for args in ((0, 0, 0), (2**62, 2**40, 255), (12345, 10**9, 7)):
        value = step_seed(*args)
        assert 0 <= value < 2**63
        torch.Generator().manual_seed(value)  # accepted as it is
