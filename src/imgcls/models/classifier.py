"""The one LightningModule: a net, its loss and metrics, optimizer and schedule.

Its hyperparameters are plain data (the net's name and kwargs, the optimizer and scheduler
configs, the class names, the eval preprocessing), so a checkpoint loads with
`torch.load(weights_only=True)` and rebuilds the same model alone (models/loading.py): predict
and export need nothing else.
"""

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from imgcls.models.calibration import TemperatureFit
from imgcls.models.confusion import ClassAveragedScores
from imgcls.models.distill import Teacher, check_distill, teacher_for
from imgcls.models.multilabel import (
    TASKS,
    MultiHotLoss,
    MultilabelScores,
    balanced_pos_weights,
)
from imgcls.models.optim import build_optimizer, build_scheduler
from imgcls.models.pretrained import find_head
from imgcls.models.tta import tta_logits
from imgcls.models.zoo import PRETRAINED_KEYS, build_net
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)
# the checkpoint entry that holds the run's planned length (on_save_checkpoint)
RUN_LENGTH = "imgcls_run_length"
# Under DDP Lightning asks for sync_dist=True on every value logged per epoch. Ours are synced
# already (torchmetrics computes over every process; the throughput figures are per process
# by design), and sync_dist would reduce them again where Lightning reads them, on rank 0 alone
# at times: a collective one process never joins, a hang.
warnings.filterwarnings("ignore", message=r".*sync_dist=True.*when logging on epoch level")


# the ratio of the train split's largest class to its smallest from which a run says so
IMBALANCE_RATIO = 10
# per task, the validation scores whose best so far is logged as val/<name>_best: any of them can
# pick the checkpoint (callbacks.model_checkpoint.monitor) and be a sweep's optimized_metric
BEST_TRACKED = {
    "multiclass": ("acc", "acc_balanced", "f1_macro"),
    "multilabel": ("map", "f1_macro"),
}


def accuracy_metrics(num_classes: int, prefix: str, evaluation: bool = True) -> MetricCollection:
    """Top-1 accuracy; for evaluation also balanced accuracy and macro F1 and, where it means
    something (more than 5 classes), top-5 accuracy."""
    # validate_args=False: the input checks read values back to the host (a device sync per
    # step); our own logits and labels need no checking
    metrics = {"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)}
    if evaluation:
        metrics["class_averaged"] = ClassAveragedScores(num_classes)  # acc_balanced, f1_macro
        if num_classes > 5:
            metrics["acc_top5"] = MulticlassAccuracy(
                num_classes, top_k=5, average="micro", validate_args=False
            )
    return MetricCollection(metrics, prefix=prefix)


def multilabel_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """mAP and F1 micro / macro at the model's thresholds (models/multilabel.py)."""
    return MetricCollection({"scores": MultilabelScores(num_classes)}, prefix=prefix)


def balanced_class_weights(counts: Tensor) -> list[float]:
    """Inverse class frequency, scaled so a training image weighs 1 on average (sklearn's
    "balanced"): the loss keeps its scale and the lr its meaning. A class with no training
    image weighs 1."""
    counts = counts.double()
    present = counts > 0
    weights = counts.sum() / (present.sum() * counts.clamp(min=1))
    return torch.where(present, weights, 1.0).tolist()


def check_task(task: str, temperature: float | str | None, threshold: float | str) -> None:
    """The options of one task that the other cannot serve, refused at start in one line."""
    if task not in TASKS:
        raise UserError(f"model.task={task!r} is not one of {', '.join(TASKS)}.")
    if threshold != "fit" and not (isinstance(threshold, int | float) and 0 < threshold < 1):
        raise UserError(f"model.threshold={threshold!r} is not allowed: fit, or in (0, 1).")
    if task == "multilabel" and temperature is not None:
        raise UserError(
            "model.temperature scales a softmax; model.task=multilabel has a sigmoid per class "
            "and a threshold each (model.threshold=fit): set model.temperature=null."
        )
    if task == "multiclass" and threshold != 0.5:
        raise UserError(
            f"model.threshold={threshold} applies to model.task=multilabel (a label per class "
            "above it); one label per image is the top class: leave model.threshold=0.5."
        )


class ImageClassifier(LightningModule):
    """A net with its loss, metrics and optimizer: the training, validation and test steps. One
    label per image (`task=multiclass`: softmax, cross-entropy, accuracy) or several
    (`task=multilabel`: a sigmoid per class, binary cross-entropy, mAP, a threshold per class).
    Freezing the backbone is callbacks.FrozenBackbone's; test-time augmentation is
    models/tta.py's; the lr a run uses is settled with its config (run/settle.py)."""

    def __init__(
        self,
        net: dict[str, Any],
        num_classes: int,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        task: str = "multiclass",
        class_weights: list[float] | str | None = None,
        temperature: float | str | None = None,
        threshold: float | str = 0.5,
        class_names: list[str] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        tta_flip: bool = False,
        tta_shift: int = 0,
        preprocessing: dict[str, Any] | None = None,
        distill: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # train.py logs the whole config
        check_task(task, temperature, threshold)
        self.multilabel = task == "multilabel"
        if distill and distill.get("teacher"):
            check_distill(distill["alpha"], distill["temperature"], self.multilabel)
        # models/distill.py: built for fitting only (`setup`), never saved
        self.teacher: Teacher | None = None
        self.net = build_net(num_classes=num_classes, **net)
        self.head_name = find_head(self.net, num_classes)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        # The compiled net is kept off the module tree so state_dict keys stay `net.*` (no
        # `_orig_mod.`): checkpoints load with or without compile, and into plain torchvision.
        object.__setattr__(self, "_compiled_net", torch.compile(self.net) if compile else None)
        # per-image losses: the epoch's mean loss is over images, with no batch size to pass.
        # Class weights ("balanced": resolved from the train split in `setup`) are a buffer of
        # the loss, so they travel in the checkpoint.
        self.criterion = (
            MultiHotLoss(num_classes, label_smoothing)
            if self.multilabel
            else nn.CrossEntropyLoss(label_smoothing=label_smoothing, reduction="none")
        )
        if class_weights is not None:
            # registered now (ones until "balanced" is resolved in `setup`), so a copy made
            # before `setup` (the EMA's) has the same buffers
            resolved = not isinstance(class_weights, str)
            weights = list(class_weights) if resolved else [1.0] * num_classes
            self._set_class_weights(weights, record=resolved)
        # softmax(logits / temperature): the probabilities predict, export and the report give.
        # "fit": refitted on the validation split's logits at every validation, so each
        # checkpoint holds the temperature of its own weights (models/calibration.py).
        fixed = temperature if isinstance(temperature, int | float) else 1.0
        self.register_buffer("temperature", torch.tensor(float(fixed)))
        self.temperature_fit = TemperatureFit() if temperature == "fit" else None
        # fitted on the validation split, not learned: what the EMA copies rather than averages
        self.fitted_on_validation = ("thresholds",) if self.multilabel else ("temperature",)
        if self.multilabel:
            # a label is present where its sigmoid reaches its class's threshold ("fit": each
            # class's F1-best on the validation split, refitted at every validation)
            start = 0.5 if threshold == "fit" else float(threshold)
            self.register_buffer("thresholds", torch.full((num_classes,), start))
            self.train_metrics = None  # MixUp'd multi-hot targets: the loss says enough
            self.val_metrics = multilabel_metrics(num_classes, "val/")
            self.test_metrics = multilabel_metrics(num_classes, "test/")
        else:
            # top-1 only on training batches: more there costs a step and tells little
            self.train_metrics = accuracy_metrics(num_classes, "train/", evaluation=False)
            self.val_metrics = accuracy_metrics(num_classes, "val/")
            self.test_metrics = accuracy_metrics(num_classes, "test/")
        # nan_strategy="disable": the NaN check reads the loss back to the host every step; a
        # non-finite loss is noted on the device instead (note_if_nonfinite)
        self.train_loss, self.val_loss, self.test_loss = (
            MeanMetric(nan_strategy="disable") for _ in range(3)
        )
        # the first step whose training loss was NaN or infinite, -1 for none, on the device
        self.first_nonfinite_step: Tensor | None = None
        # in checkpoints, so a resumed run's best counts the epochs before the resume
        self.best_tracked = BEST_TRACKED[task]
        for name in self.best_tracked:
            best = MaxMetric()
            best.persistent(True)
            setattr(self, f"val_{name}_best", best)
        if preprocessing and preprocessing.get("crop"):
            # for TensorBoard's graph (logger.tensorboard.log_graph=true) and the model summary
            crop = preprocessing["crop"]
            self.example_input_array = torch.zeros(2, 3, crop, crop, dtype=torch.uint8)

    @property
    def head(self) -> nn.Module:
        """The classifier layer (a property, so its weights are not saved twice)."""
        return self.net.get_submodule(self.head_name)

    @property
    def class_names(self) -> list[str]:
        names = self.hparams.get("class_names")
        return list(names) if names else [str(i) for i in range(self.hparams.num_classes)]

    def forward(self, images: Tensor) -> Tensor:
        images = images.contiguous(memory_format=self.memory_format)
        # `is not None`, not `or`: a compiled module's truth value asks its len(), which only
        # containers such as nn.Sequential have
        net = self._compiled_net if self._compiled_net is not None else self.net
        return net(images)

    def eval_logits(self, images: Tensor, tta_flip: bool | None = None) -> Tensor:
        """Logits for evaluation, with the model's test-time augmentation (`tta_flip` given:
        flips on or off whatever the model's own setting)."""
        flip = self.hparams.tta_flip if tta_flip is None else tta_flip
        return tta_logits(self, images, flip, self.hparams.tta_shift)

    def probabilities(self, logits: Tensor) -> Tensor:
        """What the model says of each class: softmax(logits / temperature) for one label per
        image, one sigmoid per class for several."""
        if self.multilabel:
            return logits.float().sigmoid()
        return self.calibrated(logits.float()).softmax(dim=1)

    def calibrated(self, logits: Tensor) -> Tensor:
        """Logits whose softmax gives the model's probabilities (divided by its temperature)."""
        return logits / self.temperature

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Accept checkpoints written by code that compiled the LightningModule or the net, or
        that did not keep the best validation scores or a temperature."""
        # the raw weights of an EMA checkpoint are read back too (a resumed fit continues them)
        for key in ("state_dict", "current_model_state"):
            state = checkpoint.get(key)
            if state is None:
                continue
            for old in [k for k in state if "_orig_mod." in k]:
                state[old.replace("_orig_mod.", "")] = state.pop(old)
            for name in self.best_tracked:
                prefix = f"val_{name}_best."
                for k, value in getattr(self, prefix[:-1]).state_dict(prefix=prefix).items():
                    state.setdefault(k, value)
            state.setdefault("temperature", torch.ones(()))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """No checkpoint of diverged weights, whichever callbacks a run has; and the run's
        planned length, against which a resume's is checked (imgcls/resume.py)."""
        self.raise_if_diverged()
        checkpoint[RUN_LENGTH] = {"max_epochs": self.trainer.max_epochs}

    def note_if_nonfinite(self, loss: Tensor) -> None:
        """Fold "is this training loss finite" and its step into a device tensor: nothing is
        read back here; `raise_if_diverged` reads it where a checkpoint is written, and
        callbacks.NonFiniteLossStop sooner."""
        step = self.global_step + 1  # the optimizer step this batch counts towards
        first = self.first_nonfinite_step
        if first is None or first.device != loss.device:
            first = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad_now = ~torch.isfinite(loss.detach()) & (first < 0)
        self.first_nonfinite_step = torch.where(bad_now, step, first)

    def raise_if_diverged(self, lrs: Mapping[int, float] | None = None) -> None:
        """Stop with one line once a training loss has been NaN or infinite, naming its step,
        the lr then (`lrs`: by step, where known; else the lr now) and the last good
        checkpoint. One host read."""
        if self.first_nonfinite_step is None:
            return
        step = int(self.first_nonfinite_step)
        if step < 0:
            return
        trainer = self.trainer
        lr = (lrs or {}).get(step, trainer.optimizers[0].param_groups[0]["lr"])
        kept = [
            c.last_model_path or c.best_model_path
            for c in trainer.checkpoint_callbacks
            if isinstance(c, ModelCheckpoint)
        ]
        last_good = next((p for p in kept if p and Path(p).is_file()), None)
        raise UserError(
            f"The training loss became NaN or infinite at step {step} (epoch "
            f"{trainer.current_epoch}, lr {lr:.3g}); stopped before writing another checkpoint. "
            + (
                f"The last good checkpoint is {last_good}: resume from it with a lower "
                "optimizer.lr, gradient clipping (trainer.gradient_clip_val=1.0) or "
                "trainer.precision=32-true."
                if last_good
                else "No checkpoint was written before it: lower optimizer.lr, clip gradients "
                "(trainer.gradient_clip_val=1.0) or use trainer.precision=32-true."
            )
        )

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> tuple[Tensor, Tensor]:
        images, labels = batch
        logits = self(images) if stage == "train" else self.eval_logits(images)
        # labels are class indices, MixUp/CutMix soft targets, or (multilabel) multi-hot targets
        losses = self.criterion(logits, labels)
        if stage == "train" and self.teacher is not None:
            losses = self.teacher.losses(images, logits, losses)
        if labels.ndim == 2 and not self.multilabel:
            labels = labels.argmax(dim=1)  # accuracy against the dominant class
        # Only metric state is updated in the step; values are computed (and DDP-synced) and
        # logged once per epoch, in _log_epoch: nothing in the step waits on the device, and
        # Lightning's per-call logging cost (~1 ms on a CPU) is not paid every step. The mean
        # takes the per-image losses, not a batch size: torchmetrics makes a Python weight a
        # device tensor with a blocking copy (and ignores weights under nan_strategy="disable").
        getattr(self, f"{stage}_loss").update(losses.detach())
        metrics = getattr(self, f"{stage}_metrics")
        if metrics is not None:
            metrics.update(logits.detach(), labels)
        return losses.mean(), logits

    def _log_epoch(self, stage: str) -> dict[str, Tensor]:
        mean_loss, metrics = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_metrics")
        values = {f"{stage}/loss": mean_loss.compute()}
        mean_loss.reset()
        if metrics is not None:
            if self.multilabel:  # scored (and, fitting, moved) at the model's thresholds
                scores = metrics["scores"]
                scores.thresholds = self.thresholds
                # refitted at validation, never on a sanity check's couple of batches
                scores.fit_thresholds = (
                    stage == "val"
                    and self.hparams.threshold == "fit"
                    and not self.trainer.sanity_checking
                )
            values |= metrics.compute()
            metrics.reset()
        for name, value in values.items():
            self.log(name, value, prog_bar=name.endswith(("/loss", "/acc", "/map")))
        return values

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._shared_step(batch, "train")
        self.note_if_nonfinite(loss)
        return loss  # its step-level curve: callbacks.StepLossCurve

    # Evaluation steps hand their logits to callbacks (confusion matrices, wrong images).
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        _, logits = self._shared_step(batch, "val")
        if self.temperature_fit is not None:
            self.temperature_fit.update(logits.detach(), batch[1])
        return {"logits": logits.detach()}

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        _, logits = self._shared_step(batch, "test")
        return {"logits": logits.detach()}

    def on_fit_start(self) -> None:
        """The teacher (model.distill) goes to this process's device. A net with a data-dependent
        initialization (fast_cifar's whitening stem) gets it from the first training images, in
        split order and un-augmented, before the first step of a fresh run (a resumed run or
        pretrained weights already set those layers). Every process computes the same weights;
        rank 0's are broadcast all the same (as CPU tensors: a pickled CUDA tensor lands on rank
        0's GPU on every rank), since DDP syncs parameters only when it wraps the model, before
        this hook."""
        if self.teacher is not None:
            self.teacher.to(self.device)
        net, trainer = self.net, self.trainer
        pretrained = any(self.hparams.net.get(key) for key in PRETRAINED_KEYS)
        if not hasattr(net, "init_from_data") or trainer.ckpt_path or pretrained:
            return
        images = trainer.datamodule.first_train_images(net.data_init_images, self.device)
        net.init_from_data(images)
        if trainer.world_size > 1:
            state = {name: t.cpu() for name, t in net.state_dict().items()}
            net.load_state_dict(trainer.strategy.broadcast(state))
        log.info(f"{type(net).__name__}: initialized from {len(images)} training images")

    def setup(self, stage: str) -> None:
        """`class_weights=balanced` from the train split's class counts (before the model moves
        to its device and a resume restores its state); an imbalance nothing evens out, said;
        the teacher of model.distill built."""
        if stage != "fit":
            return
        if self.teacher is None:
            self.teacher = teacher_for(self.hparams.get("distill"), self)
        datamodule = self.trainer.datamodule
        counts = datamodule.class_counts("train") if datamodule is not None else None
        self._say_if_imbalanced(counts, getattr(datamodule, "sampler", None))
        weights = self.hparams.class_weights
        if not isinstance(weights, str):
            return
        if weights != "balanced":
            raise UserError(
                f"model.class_weights={weights!r} is not allowed: balanced, a list of "
                f"{self.hparams.num_classes} numbers or null."
            )
        if counts is None:
            raise UserError(
                "model.class_weights=balanced needs a data source that knows its train labels "
                "(digits, cifar10, cifar100, folder, imagenet, csv): give the weights as a list."
            )
        if self.multilabel:  # counts: each class's positives
            total = datamodule.split_size("train")
            self._set_class_weights(balanced_pos_weights(counts, total))
        else:
            self._set_class_weights(balanced_class_weights(counts))
        named = zip(self.class_names, self.hparams.class_weights, strict=True)
        log.info(f"Class weights (balanced): {', '.join(f'{n} {w:.3g}' for n, w in named)}")

    def _say_if_imbalanced(self, counts: Tensor | None, sampler: str | None) -> None:
        """One line when the train split's largest class (`counts`) has IMBALANCE_RATIO times
        the images of its smallest or more, and neither the loss nor the draw evens it out."""
        if self.multilabel or self.hparams.class_weights is not None or sampler == "balanced":
            return
        if counts is None or not (counts > 0).any():
            return
        largest = int(counts.argmax())
        smallest = int(torch.where(counts > 0, counts, counts.max() + 1).argmin())
        if counts[largest] < IMBALANCE_RATIO * counts[smallest]:
            return
        names = self.class_names
        log.warning(
            f"The train split is imbalanced: {names[largest]} has {int(counts[largest])} images, "
            f"{names[smallest]} {int(counts[smallest])}. data.sampler=balanced or "
            "model.class_weights=balanced even it out; val/acc_balanced and val/f1_macro measure "
            "it (callbacks.model_checkpoint.monitor=val/acc_balanced)."
        )

    def _set_class_weights(self, weights: list[float], record: bool = True) -> None:
        """The loss's class weights; `record`: also the checkpoint's hyperparameters."""
        if len(weights) != self.hparams.num_classes:
            raise UserError(
                f"model.class_weights has {len(weights)} values for {self.hparams.num_classes} "
                "classes: give one per class, in class order, or model.class_weights=balanced."
            )
        if record:
            self.hparams.class_weights = weights
        # cross-entropy's per-class weight; binary cross-entropy's weight of positives
        name = "pos_weight" if self.multilabel else "weight"
        values = torch.tensor(weights, dtype=torch.float32)
        current = getattr(self.criterion, name)
        if current is None:
            setattr(self.criterion, name, values)
        else:  # in place: the buffer a copy of the model (the EMA's) shares the name of
            current.copy_(values)

    def on_train_start(self) -> None:
        # A fresh fit starts from no best (a resumed one has its own back from the checkpoint).
        if self.trainer.ckpt_path is None:
            for name in self.best_tracked:
                getattr(self, f"val_{name}_best").reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        values = self._log_epoch("val")
        if self.temperature_fit is not None:
            if not self.trainer.sanity_checking:
                self.temperature.copy_(self.temperature_fit.compute())
                self.log("val/temperature", self.temperature)
            self.temperature_fit.reset()
        if not self.trainer.sanity_checking:
            for name in self.best_tracked:
                best = getattr(self, f"val_{name}_best")
                best.update(values[f"val/{name}"])
                self.log(f"val/{name}_best", best.compute(), prog_bar=name == "acc")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> dict[str, Any]:
        trainer = self.trainer
        optimizer = build_optimizer(
            self.net,
            self.hparams.optimizer,
            self.head,
            grad_scaler=getattr(trainer.precision_plugin, "scaler", None) is not None,
            clipping=bool(trainer.gradient_clip_val),
        )
        scheduler = build_scheduler(
            optimizer,
            self.hparams.scheduler,
            total_steps=trainer.estimated_stepping_batches,
            max_epochs=trainer.max_epochs,
        )
        return (
            {"optimizer": optimizer, "lr_scheduler": scheduler}
            if scheduler
            else {"optimizer": optimizer}
        )
