"""The one LightningModule: a net, the objective of its task, the steps, the optimizer wiring.

What a task means (the loss, the scores and their bests, the probabilities, the class weights, a
fitted temperature or thresholds) is its objective's (models/objectives/); a teacher to distil
from is set by the entry point that trains (models/distill.py, kept off the module tree). Its
hyperparameters are plain data (the net's name and kwargs, the optimizer and scheduler configs,
the class names, the eval preprocessing), so a checkpoint loads with
`torch.load(weights_only=True)` and rebuilds the same model alone (models/loading.py): predict
and export need nothing else.
"""

import warnings
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from imgcls.models.divergence import DivergenceGuard
from imgcls.models.knn import knn_accuracy
from imgcls.models.lora import apply_lora, describe, fixed_parameters, lora_on
from imgcls.models.migration import migrate
from imgcls.models.objectives import OBJECTIVES, Objective
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


class ImageClassifier(LightningModule):
    """A net trained for its task: one label per image (`task=multiclass`) or several
    (`task=multilabel`), OBJECTIVES[task]. Freezing the backbone is callbacks.FrozenBackbone's;
    test-time augmentation is models/tta.py's; the lr a run uses is settled with its config
    (run/settle.py)."""

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
        probe: dict[str, Any] | None = None,
        lora: dict[str, Any] | None = None,
    ) -> None:
        """`distill`: what the teacher was (kept with the run's hyperparameters); the teacher
        itself is set by the entry point that trains (`teacher`). `probe.enabled`: a linear
        probe, the backbone frozen (its features cached: data/features.py), the head alone
        trained; `probe.knn_k`, `probe.knn_temperature`: the k-NN scored beside it. `lora`: the
        net's low-rank adapters (models/lora.py), recorded with their targets resolved."""
        super().__init__()
        self.save_hyperparameters(logger=False)  # train.py logs the whole config
        self.objective: Objective = OBJECTIVES[task](
            num_classes, label_smoothing, class_weights, temperature, threshold
        )
        self.teacher: Any = None  # models/distill.Teacher, for fitting only, never saved
        self.divergence = DivergenceGuard()
        self.net = build_net(num_classes=num_classes, **net)
        self.head_name = find_head(self.net, num_classes)
        if lora_on(lora):  # before the memory format and compile: they take the adapted net
            if (probe or {}).get("enabled"):
                raise UserError(
                    "model.probe trains the head alone and model.lora adapts the backbone: "
                    "set model.lora.rank=null for a linear probe."
                )
            self.hparams.lora = apply_lora(self.net, lora, self.head_name)
        self._knn: dict[str, Tensor] = {}  # a probe's k-NN accuracy per split, computed once
        if (probe or {}).get("enabled"):  # the backbone never learns: the head's are the params
            head = {id(p) for p in self.head.parameters()}
            for param in self.net.parameters():
                param.requires_grad_(id(param) in head and param.requires_grad)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        # The compiled net is kept off the module tree so state_dict keys stay `net.*` (no
        # `_orig_mod.`): checkpoints load with or without compile, and into plain torchvision.
        object.__setattr__(self, "_compiled_net", torch.compile(self.net) if compile else None)
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

    @property
    def fitted_on_validation(self) -> tuple[str, ...]:
        """The buffers fitted on the validation split, not learned: an EMA copies them."""
        return tuple(f"objective.{name}" for name in self.objective.fitted_on_validation)

    def forward(self, images: Tensor) -> Tensor:
        """Logits of images; a batch of feature rows (a linear probe's cached features,
        data/features.py: what the head receives) goes to the head alone."""
        if images.ndim == 2:
            return self.head(images)
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
        return self.objective.probabilities(logits)

    # -- steps -------------------------------------------------------------------------------
    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> tuple[Tensor, Tensor]:
        images, targets = batch
        logits = self(images) if stage == "train" else self.eval_logits(images)
        losses = self.objective.losses(logits, targets)
        if stage == "train" and self.teacher is not None:
            losses = self.teacher.losses(images, logits, losses)
        self.objective.update(stage, logits, targets, losses)
        return losses.mean(), logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._step(batch, "train")
        self.divergence.note(loss, self.global_step + 1)  # the optimizer step it counts towards
        return loss  # its step-level curve: callbacks.StepLossCurve

    # Evaluation steps hand their logits to callbacks (confusion matrices, wrong images).
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return {"logits": self._step(batch, "val")[1].detach()}

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return {"logits": self._step(batch, "test")[1].detach()}

    def _log_epoch(self, stage: str) -> None:
        values = self.objective.epoch_values(stage, fit=not self.trainer.sanity_checking)
        for name, value in values.items():
            self.log(name, value, prog_bar=self.objective.in_progress_bar(name))

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")
        self._log_knn("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        self._log_knn("test")

    def _log_knn(self, stage: str) -> None:
        """A linear probe's k-NN accuracy on its cached features (models/knn.py), computed once
        per split: the features do not change. Only where the data is features."""
        probe = self.hparams.get("probe") or {}
        features = getattr(self.trainer.datamodule, "split_features", None)
        if not probe.get("enabled") or features is None:
            return
        if stage not in self._knn:
            self._knn[stage] = knn_accuracy(
                *(t.to(self.device) for t in features("train")),
                *(t.to(self.device) for t in features(stage)),
                self.hparams.num_classes,
                probe.get("knn_k", 20),
                probe.get("knn_temperature", 0.07),
            )
        self.log(f"{stage}/knn_acc", self._knn[stage])

    # -- the fit's start and end -------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """`class_weights=balanced` from the train split's class counts, before the model moves
        to its device and a resume restores its state (recorded for the checkpoint)."""
        if stage != "fit":
            return
        data = self.trainer.datamodule
        weights = self.objective.fit_to_data(
            data.class_counts("train") if data is not None else None,
            data.split_size("train") if data is not None else 0,
            getattr(data, "sampler", None),
            self.class_names,
        )
        if weights is not None:
            self.hparams.class_weights = weights

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path is None:  # a resumed fit has its bests back from the checkpoint
            self.objective.reset_bests()

    def on_fit_start(self) -> None:
        """The teacher goes to this process's device. A net with a data-dependent
        initialization (fast_cifar's whitening stem) gets it from the first training images, in
        split order and un-augmented, before the first step of a fresh run (a resumed run or
        pretrained weights already set those layers). Every process computes the same weights;
        rank 0's are broadcast all the same (as CPU tensors: a pickled CUDA tensor lands on rank
        0's GPU on every rank), since DDP syncs parameters only when it wraps the model, before
        this hook."""
        if lora_on(self.hparams.get("lora")):
            log.info(describe(self.net, self.head_name, self.hparams.lora))
        if self.teacher is not None:
            self.teacher.to(self.device, self.memory_format)
        elif (self.hparams.get("distill") or {}).get("teacher"):
            raise UserError(
                "model.distill.teacher is set but this model was given no teacher: build it "
                "with imgcls.models.distill.teacher_for(cfg.model.distill, model), as train.py "
                "does, or set model.distill.teacher=null."
            )
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

    # -- checkpoints -------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints of earlier versions read as today's (models/migration.py)."""
        kept = tuple(f"val_{name}_best" for name in self.objective.tracked)
        migrate(checkpoint, self.objective, kept + self.objective.fitted_on_validation)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """No checkpoint of diverged weights, whichever callbacks a run has; and the run's
        planned length, against which a resume's is checked (run/resume.py)."""
        self.divergence.raise_if_diverged(self.trainer)
        checkpoint[RUN_LENGTH] = {"max_epochs": self.trainer.max_epochs}

    def fixed_parameters(self) -> list[nn.Parameter]:
        """The net's parameters that never train (a LoRA run's backbone, a linear probe's):
        kept out of the optimizer and the EMA."""
        if (self.hparams.get("probe") or {}).get("enabled"):
            head = {id(p) for p in self.head.parameters()}
            return [p for p in self.net.parameters() if id(p) not in head]
        return fixed_parameters(self.net, self.head_name)

    def configure_optimizers(self) -> dict[str, Any]:
        trainer = self.trainer
        optimizer = build_optimizer(
            self.net,
            self.hparams.optimizer,
            self.head,
            fixed=self.fixed_parameters(),
            grad_scaler=getattr(trainer.precision_plugin, "scaler", None) is not None,
            clipping=bool(trainer.gradient_clip_val),
        )
        scheduler = build_scheduler(
            optimizer,
            self.hparams.scheduler,
            total_steps=trainer.estimated_stepping_batches,
            max_epochs=trainer.max_epochs,
        )
        if scheduler is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
