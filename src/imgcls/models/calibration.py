"""Are the probabilities to be trusted: reliability bins (expected calibration error and the
reliability diagram), and temperature scaling (Guo et al. 2017) fitted on the validation split.

torchmetrics' MulticlassCalibrationError gives the error alone and keeps every prediction (a list
gathered over devices); the diagram needs the bins. `ReliabilityBins` keeps the same 15 bins as
sums of fixed size (count, confidence, correct): nothing read back in a step, summed over devices
like any metric state, and its error equals torchmetrics' (tests/models/test_calibration.py).
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

# torchmetrics' default, and Guo et al.'s
CALIBRATION_BINS = 15
# the temperatures a fit may reach
TEMPERATURE_RANGE = (0.05, 20.0)
# below this many validation images a fitted temperature is mostly noise (Guo et al. fit on
# 5,000; 36 images once took a test split's ECE from 0.046 to 0.071): the run says so
FEW_CALIBRATION_IMAGES = 500


def top_confidence(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The top class's probability and whether it is the true class (as floats)."""
    confidence, predicted = logits.float().softmax(dim=1).max(dim=1)
    return confidence, (predicted == labels).float()


class ReliabilityBins(Metric):
    """Per confidence bin: how many predictions, their summed confidence, how many were right."""

    full_state_update = False
    sums: Tensor

    def __init__(self, bins: int = CALIBRATION_BINS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bins = bins
        # as torchmetrics bins: [b_i, b_i+1), a confidence of exactly 1 in a slot of its own
        self.register_buffer("edges", torch.linspace(0, 1, bins + 1), persistent=False)
        self.add_state("sums", default=torch.zeros(3, bins + 1), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        confidence, correct = top_confidence(logits, labels)
        slot = torch.bucketize(confidence, self.edges, right=True) - 1
        values = torch.stack([torch.ones_like(confidence), confidence, correct])
        rows = torch.arange(3, device=slot.device)[:, None]
        self.sums.index_put_((rows, slot[None]), values, accumulate=True)

    def compute(self) -> dict[str, Tensor]:
        return reliability(self.sums)


def reliability(sums: Tensor) -> dict[str, Tensor]:
    """`ece`, and per bin (the last slot, confidence 1, folded into the top bin): `count`, mean
    `confidence` and `accuracy` (0 where a bin is empty)."""
    count, confidence, correct = sums.double()
    ece = (correct - confidence).abs().sum() / count.sum().clamp(min=1)
    count, confidence, correct = (
        torch.cat([s[:-2], s[-2:].sum(dim=0, keepdim=True)]) for s in (count, confidence, correct)
    )
    mean = count.clamp(min=1)
    return {"ece": ece, "count": count, "confidence": confidence / mean, "accuracy": correct / mean}


class TemperatureFit(Metric):
    """The validation split's logits and labels, gathered over devices; `compute` fits the one
    temperature T that minimizes the negative log-likelihood of softmax(logits / T). T scales
    every logit alike, so predictions (and accuracy) are unchanged; only confidences move."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        self.logits.append(logits.float())
        self.labels.append(labels)

    def compute(self) -> Tensor:
        labels = dim_zero_cat(self.labels)
        self.fitted_on = len(labels)  # every rank's, as the states are gathered
        return fit_temperature(dim_zero_cat(self.logits), labels)


def fit_temperature(logits: Tensor, labels: Tensor) -> Tensor:
    """T by L-BFGS, from T = 1 as Guo et al.'s reference code; on 1 / T, in which the negative
    log-likelihood is convex (one minimum, no step lost in a flat region). The result is held
    to TEMPERATURE_RANGE: a validation split the net gets all right asks for T -> 0 (every
    probability 1), which no test split bears out. Logits that are not finite give T = 1."""
    with torch.inference_mode(False), torch.enable_grad():
        logits, labels = logits.detach().clone(), labels.clone()  # out of inference mode
        inverse = torch.ones((), device=logits.device, requires_grad=True)
        optimizer = torch.optim.LBFGS([inverse], max_iter=100, line_search_fn="strong_wolfe")

        def nll() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(logits * inverse, labels)
            loss.backward()
            return loss

        optimizer.step(nll)
        low, high = TEMPERATURE_RANGE
        fitted = 1 / inverse.detach().clamp(1 / high, 1 / low)
        return torch.where(fitted.isfinite(), fitted, 1.0)  # non-finite logits: no scaling
