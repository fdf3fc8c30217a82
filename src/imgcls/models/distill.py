"""Knowledge distillation (Hinton et al. 2015): a trained teacher's softened predictions as a second
target, `model.distill.teacher=<our checkpoint | torchvision name[:weights] | timm/<name>>` (the
names the zoo knows, models/zoo.pretrained_config). The objective's per-image losses are blended
with the teacher's term (`Teacher.losses`); the entry point that trains builds the teacher and
hands it to the model (`teacher_for`), so the model never imports this module.

The loss per image is `(1 - alpha) * the usual loss + alpha * T^2 * KL(teacher || student)` on
logits divided by the temperature T (the T^2 keeps the soft term's gradients at the scale of the
hard one's). The teacher sees the very batch the student sees (augmented, mixed), in eval mode,
without gradients, under the run's precision (Lightning's autocast covers the step). It is held
off the LightningModule's module tree: its weights are never in a checkpoint, DDP does not wrap
or sync it (each rank runs its own copy), and a copy of the model (the EMA's) shares it.
"""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgcls.models.loading import load_classifier
from imgcls.models.pretrained import weights_contract
from imgcls.models.zoo import build_net, pretrained_classes, pretrained_config
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)


def check_distill(alpha: float, temperature: float, task: str) -> None:
    if not 0 <= alpha <= 1:
        raise UserError(f"model.distill.alpha={alpha} weighs the teacher's term: in [0, 1].")
    if not temperature > 0:
        raise UserError(f"model.distill.temperature={temperature} must be above 0 (1: plain).")
    if task != "multiclass":
        raise UserError(
            "model.distill distils one label per image (softmax over classes); with "
            "model.task=multilabel leave model.distill.teacher=null."
        )


class Teacher:
    """A frozen net whose logits the student learns from. Not an nn.Module attribute of the
    model (see the module's docstring); copying the model shares it."""

    def __init__(self, net: nn.Module, alpha: float, temperature: float) -> None:
        self.net = net.eval().requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature
        # the dtype it runs in: the student's batch is cast to it (under trainer.precision=
        # bf16-true the batch is bf16, the teacher's weights float32)
        self.dtype = next(net.parameters()).dtype

    def __deepcopy__(self, memo: dict) -> "Teacher":
        return self

    def to(
        self, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format
    ) -> "Teacher":
        """On the student's device, in its memory format (channels_last where the student's
        batch is: a teacher in the other layout would convert it at every conv)."""
        self.net.to(device, memory_format=memory_format)
        return self

    def losses(self, images: Tensor, logits: Tensor, losses: Tensor) -> Tensor:
        """Per image: the usual `losses` blended with the soft-target term (at alpha 0 the
        usual losses alone, and the teacher is not run)."""
        if self.alpha == 0:
            return losses
        t = self.temperature
        with torch.inference_mode():
            target = F.log_softmax(self.net(images.to(self.dtype)).float() / t, dim=1)
        soft = F.kl_div(
            F.log_softmax(logits.float() / t, dim=1),
            target.clone(),  # an inference tensor cannot be saved for the backward
            reduction="none",
            log_target=True,
        ).sum(dim=1) * (t * t)
        return (1 - self.alpha) * losses + self.alpha * soft


def check_normalization(
    spec: str, mean: Sequence[float] | None, std: Sequence[float] | None, run: tuple | None
) -> None:
    """A teacher sees the student's batch: it must have been trained on images normalized alike
    (`run`: the run's mean and std; None where either is unknown)."""
    if run is None or mean is None or std is None:
        return
    same = all(
        math.isclose(a, b, abs_tol=1e-3)
        for a, b in zip([*mean, *std], [*run[0], *run[1]], strict=True)
    )
    if not same:
        raise UserError(
            f"The teacher {spec} was trained on images normalized by mean {list(mean)}, std "
            f"{list(std)}; this run uses {list(run[0])}, {list(run[1])}: set data.mean and "
            "data.std to the teacher's."
        )


def build_teacher(
    spec: str, num_classes: int, class_names: list[str], mean_std: tuple | None
) -> nn.Module:
    """The teacher's net from our checkpoint, or by a name the zoo knows with its pretrained
    weights (a torchvision name, `regnet_y_16gf` with its DEFAULT weights or
    `resnet50:IMAGENET1K_V2`; `timm/<name>`), with its own head: what cannot be fixed by a
    setting is checked first (it must predict this run's classes), then that it was trained on
    images normalized as this run's (`mean_std`; it sees the student's batch)."""
    if spec.endswith(".ckpt") or Path(spec).is_file():
        teacher = load_classifier(spec)
        if teacher.class_names != class_names:
            raise UserError(
                f"The teacher {spec} predicts {teacher.class_names[:5]}..., this run's classes are "
                f"{class_names[:5]}...: a teacher must know the same classes in the same order."
            )
        theirs = teacher.hparams.get("preprocessing") or {}
        check_normalization(spec, theirs.get("mean"), theirs.get("std"), mean_std)
        return teacher.net
    net_config = pretrained_config(spec, key="model.distill.teacher")
    classes = pretrained_classes(net_config)  # before any download: no setting fixes it
    if classes != num_classes:
        raise UserError(
            f"The teacher {spec} predicts {classes} classes, this run has {num_classes}: distil "
            "from a teacher trained on this run's classes (one of our checkpoints)."
        )
    contract = weights_contract(net_config)  # the weights' own normalization
    if contract is not None:
        check_normalization(spec, contract.mean, contract.std, mean_std)
    return build_net(num_classes=classes, **net_config)


def teacher_for(cfg: dict[str, Any] | None, model: Any) -> Teacher | None:
    """The model's teacher per its `model.distill` config (checked first), or None without
    one. Built by the entry point that trains (train.py), never by the model itself."""
    if not cfg or not cfg.get("teacher"):
        return None
    check_distill(cfg["alpha"], cfg["temperature"], model.hparams.get("task", "multiclass"))
    preprocessing = model.hparams.get("preprocessing") or {}
    mean_std = None
    if preprocessing.get("mean") is not None:
        mean_std = (list(preprocessing["mean"]), list(preprocessing["std"]))
    net = build_teacher(str(cfg["teacher"]), model.hparams.num_classes, model.class_names, mean_std)
    log.info(
        f"Distilling from {cfg['teacher']} (alpha {cfg['alpha']}, temperature {cfg['temperature']})"
    )
    return Teacher(net, cfg["alpha"], cfg["temperature"])
