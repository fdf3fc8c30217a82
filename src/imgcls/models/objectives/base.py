"""What a task means for the model: one objective per task (`model.task`), each owning its
criterion, its metrics and the bests tracked of them, its probabilities, what it fits on the
validation split (a temperature, thresholds), its class weights and the names of its metrics.

The LightningModule (models/classifier.py) runs the steps and hands each batch's logits, targets
and per-image losses to its objective. Only metric state is updated in a step; values are
computed (and synced over devices) once per epoch: nothing in a step waits on the device, and
Lightning's per-call logging cost (~1 ms on a CPU) is not paid every step. The mean loss takes
the per-image losses, not a batch size: torchmetrics makes a Python weight a device tensor with
a blocking copy (and ignores weights under nan_strategy="disable", set because its NaN check
reads the loss back to the host every step).

A new task (ordinal, regression) is one new file: a subclass registered by name in OBJECTIVES.
"""

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection

from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.registry import Registry

log = get_logger(__name__)
OBJECTIVES: Registry[type["Objective"]] = Registry("model.task")
STAGES = ("train", "val", "test")
#: training batches held for one metric update: a torchmetrics update costs ~80 µs of host time
#: (a third of a small net's step on a CPU, more than its GPU step), the same update of a few
#: batches concatenated costs it once; held until this many batches or logit elements (4 MB)
PENDING_BATCHES = 32
PENDING_ELEMENTS = 2**20


class Objective(nn.Module):
    """A task's loss and scores. Its state (class weights, fitted buffers, the bests so far)
    travels in checkpoints under `objective.`; metric state is per epoch and never saved."""

    #: every validation score it logs (val/<name>), and those whose best so far is logged as
    #: val/<name>_best: any of the latter can pick the checkpoint and be a sweep's metric
    scores: ClassVar[tuple[str, ...]]
    tracked: ClassVar[tuple[str, ...]]
    #: the score shown in the progress bar and tracked by default (val/acc, val/map)
    headline: ClassVar[str]
    #: buffers fitted on the validation split rather than learned: an EMA copies, not averages
    fitted_on_validation: ClassVar[tuple[str, ...]] = ()
    #: the criterion's per-class weight: cross-entropy's `weight`, BCE's `pos_weight`
    class_weight_name: ClassVar[str] = "weight"

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | str | None = None,
        temperature: float | str | None = None,
        threshold: float | str = 0.5,
    ) -> None:
        """The model's task options, whichever its task: each objective refuses in one line
        those it cannot serve (`check_options`) and registers what it fits (`fitted_buffers`)."""
        self.check_options(temperature, threshold)
        super().__init__()
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        self.criterion = self.make_criterion()
        # "balanced" is worked out from the train split by `fit_to_data`
        self.weighted, self.balanced = class_weights is not None, class_weights == "balanced"
        if class_weights is not None:
            # registered now (ones until "balanced" is resolved by `fit_to_data`), so a copy made
            # before (the EMA's) has the same buffers
            resolved = not isinstance(class_weights, str)
            self.set_class_weights(list(class_weights) if resolved else [1.0] * num_classes)
        # training batches (logits, targets, losses) whose metric update is still to be made
        self.pending: list[tuple[Tensor, Tensor, Tensor]] = []
        for stage in STAGES:
            setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))
            setattr(self, f"{stage}_metrics", self.make_metrics(stage))
        for name in self.tracked:  # in checkpoints: a resumed run's best counts the epochs before
            best = MaxMetric()
            best.persistent(True)
            setattr(self, f"val_{name}_best", best)
        self.fitted_buffers(temperature, threshold)

    # -- what a subclass says ---------------------------------------------------------------
    def check_options(self, temperature: float | str | None, threshold: float | str) -> None:
        """Refuse, in one line, an option of another task (called before anything is made)."""

    def fitted_buffers(self, temperature: float | str | None, threshold: float | str) -> None:
        """Register the buffers fitted on the validation split (`fitted_on_validation`)."""

    def make_criterion(self) -> nn.Module:
        """The loss per image (reduction none), with a `class_weight_name` buffer slot."""
        raise NotImplementedError

    def make_metrics(self, stage: str) -> MetricCollection | None:
        """The scores of a stage, prefixed `<stage>/`; None for none."""
        raise NotImplementedError

    def probabilities(self, logits: Tensor) -> Tensor:
        """What the model says of each class."""
        raise NotImplementedError

    def listed(self, probabilities: Tensor, classes: Tensor, top_k: int) -> Tensor:
        """Which of each image's classes (sorted most probable first: `probabilities` and their
        `classes`) a prediction names."""
        raise NotImplementedError

    def balanced_weights(self, counts: Tensor, total: int) -> list[float]:
        """`class_weights=balanced` from the train split's counts (and its image count)."""
        raise NotImplementedError

    def card(self, class_names: list[str]) -> dict[str, Any]:
        """What an exported model's card says of its output."""
        raise NotImplementedError

    def target_names(self, targets: Tensor, class_names: list[str]) -> list[str]:
        """Each training target (mixed or not) as words, for pictures of a batch."""
        raise NotImplementedError

    def scored_targets(self, targets: Tensor) -> Tensor:
        """The targets the metrics score against (the loss takes them as they come)."""
        return targets

    def fitted(self, fit: bool) -> dict[str, Tensor]:
        """Refit what is fitted on the validation split (`fit`: not a sanity check), at the end
        of a validation epoch; the values to log."""
        return {}

    def prepare_scores(self, stage: str, fit: bool) -> None:
        """Called before a stage's scores are computed."""

    # -- shared ------------------------------------------------------------------------------
    def losses(self, logits: Tensor, targets: Tensor) -> Tensor:
        """One loss per image: class indices, MixUp/CutMix soft targets or multi-hot rows."""
        return self.criterion(logits, targets)

    def update(self, stage: str, logits: Tensor, targets: Tensor, losses: Tensor) -> None:
        """A batch into the stage's metric state. Training batches are held and updated a few
        at a time (`PENDING_BATCHES`): the same epoch values for a fraction of the host time;
        evaluation batches at once (the callbacks that read them need no waiting)."""
        if stage != "train":
            self.update_metrics(stage, logits.detach(), targets, losses.detach())
            return
        self.pending.append((logits.detach(), targets, losses.detach()))
        held = len(self.pending)
        if held >= PENDING_BATCHES or held * logits.numel() >= PENDING_ELEMENTS:
            self.flush_pending()

    def flush_pending(self) -> None:
        """The held training batches into the metric state, as one update."""
        if self.pending:
            held, self.pending = self.pending, []
            logits, targets, losses = (torch.cat(parts) for parts in zip(*held, strict=True))
            self.update_metrics("train", logits, targets, losses)

    def update_metrics(self, stage: str, logits: Tensor, targets: Tensor, losses: Tensor) -> None:
        getattr(self, f"{stage}_loss").update(losses)
        metrics = getattr(self, f"{stage}_metrics")
        if metrics is not None:
            metrics.update(logits, self.scored_targets(targets))

    def epoch_values(self, stage: str, fit: bool = True) -> dict[str, Tensor]:
        """The epoch's values to log, its metric state reset; at validation the fitted buffers
        refitted and the bests updated, unless `fit` is off (a sanity check's few batches)."""
        if stage == "train":
            self.flush_pending()
        mean_loss, metrics = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_metrics")
        values = {f"{stage}/loss": mean_loss.compute()}
        mean_loss.reset()
        if metrics is not None:
            self.prepare_scores(stage, fit)
            values |= metrics.compute()
            metrics.reset()
        if stage == "val":
            values |= self.fitted(fit)
            if fit:
                for name in self.tracked:
                    best = getattr(self, f"val_{name}_best")
                    best.update(values[f"val/{name}"])
                    values[f"val/{name}_best"] = best.compute()
        return values

    def in_progress_bar(self, name: str) -> bool:
        return name.endswith(("/loss", f"/{self.headline}", f"/{self.headline}_best"))

    def reset_bests(self) -> None:
        for name in self.tracked:
            getattr(self, f"val_{name}_best").reset()

    def set_class_weights(self, weights: Sequence[float]) -> None:
        """The criterion's class weights, in place where it has them already: the buffer a copy
        of the model (the EMA's) shares the name of."""
        if len(weights) != self.num_classes:
            raise UserError(
                f"model.class_weights has {len(weights)} values for {self.num_classes} classes: "
                "give one per class, in class order, or model.class_weights=balanced."
            )
        values = torch.tensor(list(weights), dtype=torch.float32)
        current = getattr(self.criterion, self.class_weight_name)
        if current is None:
            setattr(self.criterion, self.class_weight_name, values)
        else:
            current.copy_(values)

    def fit_to_data(
        self, counts: Tensor | None, total: int, sampler: str | None, names: list[str]
    ) -> list[float] | None:
        """At the start of a fit: `class_weights=balanced` worked out from the train split's
        class counts (returned, for the checkpoint to keep); an imbalance nothing evens out
        said (where the task can say it)."""
        if not self.balanced:
            return None
        if counts is None:
            raise UserError(
                "model.class_weights=balanced needs a data source that knows its train labels "
                "(digits, cifar10, cifar100, folder, imagenet, csv): give the weights as a list."
            )
        resolved = self.balanced_weights(counts, total)
        self.set_class_weights(resolved)
        named = ", ".join(f"{n} {w:.3g}" for n, w in zip(names, resolved, strict=True))
        log.info(f"Class weights (balanced): {named}")
        return resolved
