"""callbacks/ema.py: HostCountedEMA is torch's EMA without a host read (values fitted on
validation taken, not averaged); checkpoints hold the averaged weights as state_dict and the raw
ones as current_model_state; a resumed fit continues both, testing keeps the averaged ones."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from imgcls.callbacks.ema import EMA, HostCountedEMA
from imgcls.eval import evaluate
from imgcls.train import train
from tests.callbacks.tiny import TinyClassifier
from tests.test_train import FOUR_BATCHES, QUICK


def test_host_counted_ema_matches_torchs_ema() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ours = HostCountedEMA(model, decay=0.9, device=None, use_buffers=True)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(2, 3, 8, 8))  # moves the BatchNorm statistics and step count
        ours.update_parameters(model)
        reference.update_parameters(model)
    theirs = reference.module.state_dict()
    for name, mine in ours.module.state_dict().items():
        if mine.is_floating_point():
            torch.testing.assert_close(mine, theirs[name])
        else:  # a step count is the model's own, not an average of counts
            assert torch.equal(mine, model.state_dict()[name])
    assert ours.updates == int(ours.n_averaged) == 4


def test_ema_checkpoints_hold_the_averaged_weights_that_were_tested(
    make_cfg, tmp_path: Path
) -> None:
    metrics, _ = train(
        make_cfg(*QUICK, FOUR_BATCHES, "trainer.max_epochs=2", "callbacks=[default,ema]")
    )
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt = torch.load(best, weights_only=True)
    averaged, current = ckpt["state_dict"], ckpt["current_model_state"]
    assert averaged.keys() == current.keys()
    assert not all(torch.equal(averaged[k], current[k]) for k in averaged)
    eval_cfg = make_cfg(f"ckpt_path={best}", config_name="eval", run_dir=tmp_path / "eval")
    eval_metrics, _ = evaluate(eval_cfg)
    assert eval_metrics["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)


class Calibrated(TinyClassifier):
    """A model with a value fitted on validation (a temperature), as the classifier's
    objectives have."""

    fitted_on_validation = ("temperature",)

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.ones(()))


def moved(model: nn.Module, by: float) -> None:
    """A training step's worth of change: every weight moved by `by`."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(by)


def in_state(trainer_fn: TrainerFn) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(fn=trainer_fn))


def test_a_fitted_value_is_taken_and_buffers_follow_without_use_buffers() -> None:
    model = Calibrated()
    start = model.head.weight.clone()
    ema = HostCountedEMA(model, decay=0.5, device=None, use_buffers=False)
    ema.update_parameters(model)  # the first update copies
    moved(model, 1.0)
    model.train()
    model(torch.randn(4, 3, 8, 8) * 5 + 3)  # moves the BatchNorm statistics
    model.temperature.fill_(3.0)  # fitted at this validation
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module.head.weight, start + 0.5)  # averaged
    assert ema.module.temperature.item() == 3.0  # taken: an average would be 2
    for name, buffer in model.named_buffers():  # not averaged, as torch's AveragedModel
        assert torch.equal(ema.module.get_buffer(name), buffer), name
    assert ema.updates == 2


def test_a_checkpoint_holds_the_average_its_fitted_values_and_the_raw_weights() -> None:
    model, ema = Calibrated(), EMA(decay=0.5)
    ema.setup(None, model, "fit")
    for _ in range(3):
        moved(model, 1.0)
        ema._average_model.update_parameters(model)
    model.temperature.fill_(2.5)  # fitted at validation's end, on the averaged weights' logits
    checkpoint = {"state_dict": model.state_dict()}
    ema.on_save_checkpoint(None, model, checkpoint)
    averaged, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert torch.equal(averaged["net.5.weight"], ema._average_model.module.head.weight)
    assert torch.equal(current["net.5.weight"], model.head.weight)
    assert not torch.equal(averaged["net.5.weight"], current["net.5.weight"])
    assert averaged["temperature"].item() == 2.5  # the value just fitted, not the copy's 1

    # a resumed fit continues from the raw weights, and averages on (a lerp, not a copy)
    resumed, resumed_ema = Calibrated(), EMA(decay=0.5)
    resumed_ema.setup(None, resumed, "fit")
    resumed.load_state_dict(averaged)  # what Lightning loads before the hooks
    resumed_ema.on_load_checkpoint(in_state(TrainerFn.FITTING), resumed, checkpoint)
    assert torch.equal(resumed.head.weight, model.head.weight)
    average = resumed_ema._average_model
    assert average.updates == int(average.n_averaged) == 3
    average.update_parameters(resumed)
    expected = (averaged["net.5.weight"] + model.head.weight) / 2
    torch.testing.assert_close(average.module.head.weight, expected)

    # testing after fit (the averaged model still there): the averaged weights stay loaded
    tested = Calibrated()
    tested.load_state_dict(averaged)
    ema.on_load_checkpoint(in_state(TrainerFn.TESTING), tested, checkpoint)
    assert torch.equal(tested.head.weight, averaged["net.5.weight"])
    lightnings = EMAWeightAveraging(decay=0.5)  # why: Lightning's loads the raw ones back
    lightnings.setup(None, tested, "fit")
    lightnings.on_load_checkpoint(in_state(TrainerFn.TESTING), tested, checkpoint)
    assert torch.equal(tested.head.weight, current["net.5.weight"])
