"""models/calibration.py: the calibration error against torchmetrics', and temperature scaling."""

import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from imgcls.models.calibration import (
    TEMPERATURE_RANGE,
    ReliabilityBins,
    TemperatureFit,
    fit_temperature,
)


def test_reliability_bins_give_torchmetrics_calibration_error_and_sum_over_devices() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 4, generator=generator) * 3
    logits[:5, 0] = 200.0  # a confidence of exactly 1: torchmetrics' slot of its own
    labels = torch.randint(0, 4, (300,), generator=generator)
    assert (logits.softmax(1).max(1).values == 1.0).any()
    expected = float(MulticlassCalibrationError(4, n_bins=15)(logits, labels))
    # two "devices", each with half the batches: their states add up (dist_reduce_fx="sum")
    halves = [ReliabilityBins(), ReliabilityBins()]
    for i, half in enumerate(halves):
        for start in range(i * 150, (i + 1) * 150, 50):
            half.update(logits[start : start + 50], labels[start : start + 50])
    merged = ReliabilityBins()
    merged.sums = halves[0].sums + halves[1].sums
    result = merged.compute()
    assert float(result["ece"]) == pytest.approx(expected, abs=1e-6)
    assert len(result["count"]) == 15
    assert int(result["count"].sum()) == 300
    assert result["count"][-1] > 0  # the confident ones are in the top bin
    confidence, correct = logits.softmax(1).max(1).values, logits.argmax(1) == labels
    in_top = confidence >= 14 / 15
    assert float(result["accuracy"][-1]) == pytest.approx(float(correct[in_top].float().mean()))


def test_temperature_scaling_recovers_an_overconfident_nets_temperature() -> None:
    """Labels drawn from softmax(z); the net says 3z: the fitted temperature is about 3, and
    the calibration error falls."""
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(4000, 10, generator=generator)
    labels = torch.multinomial(z.softmax(1), 1, generator=generator).squeeze(1)
    fit = TemperatureFit()
    for start in range(0, 4000, 500):
        fit.update(3 * z[start : start + 500], labels[start : start + 500])
    with torch.inference_mode():  # as at a validation epoch's end
        temperature = float(fit.compute())
    assert temperature == pytest.approx(3.0, rel=0.1)
    assert float(fit_temperature(3 * z, labels)) == pytest.approx(temperature)
    before, after = ReliabilityBins(), ReliabilityBins()
    before.update(3 * z, labels)
    after.update(3 * z / temperature, labels)
    assert float(after.compute()["ece"]) < float(before.compute()["ece"]) / 3


def test_a_perfectly_separated_validation_split_stops_at_the_lowest_temperature() -> None:
    logits = torch.eye(3).repeat(10, 1) * 0.05  # right, by a hair: T -> 0 would make it sure
    labels = torch.arange(3).repeat(10)
    assert float(fit_temperature(logits, labels)) == pytest.approx(TEMPERATURE_RANGE[0])
