"""float32 matmul precision and deterministic kernels (run/numerics.py)."""

import pytest
import torch

from imgcls.run.numerics import nondeterministic_ops_explained
from imgcls.train import train
from imgcls.utils.errors import UserError


@pytest.fixture
def restore_torch_flags():
    precision = torch.get_float32_matmul_precision()
    deterministic = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.set_float32_matmul_precision(precision)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = benchmark


@pytest.mark.usefixtures("restore_torch_flags")
def test_matmul_precision_is_applied_and_recorded(make_cfg) -> None:
    torch.set_float32_matmul_precision("highest")
    cfg = make_cfg("debug=fdr", "float32_matmul_precision=high")
    train(cfg)
    assert torch.get_float32_matmul_precision() == "high"
    with pytest.raises(UserError, match="float32_matmul_precision='fast' is not one of"):
        train(make_cfg("debug=fdr", "float32_matmul_precision=fast"))


@pytest.mark.usefixtures("restore_torch_flags")
def test_deterministic_runs_turn_the_cudnn_autotuner_off(make_cfg) -> None:
    cfg = make_cfg("debug=fdr", "trainer.deterministic=true", "trainer.benchmark=true")
    train(cfg)
    assert cfg.trainer.benchmark is False
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.benchmark


@pytest.mark.usefixtures("restore_torch_flags")
def test_an_op_without_a_deterministic_kernel_is_one_line() -> None:
    torch.use_deterministic_algorithms(True)
    refused = r"^put_ has no deterministic kernel.*deterministic=warn"
    with pytest.raises(UserError, match=refused), nondeterministic_ops_explained():
        torch.zeros(4).put_(torch.tensor([0]), torch.tensor([1.0]))
