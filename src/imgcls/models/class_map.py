"""A model scored on another label space than it was trained on, without retraining: a subset
of its classes (ImageNet-A or ImageNet-R's 200 of ImageNet's 1000), or classes the data names
differently (`class_map=FILE`, timm's `--class-map` format: line i names the data's class that
is the model's class i; a blank line, a class of the model the data has none of).

Each data class is one column of the model's logits; the model is scored on those columns alone
(the prediction is the best of the data's classes, as ImageNet-A/R are scored), and its
objective, class names and report are the data's."""

from pathlib import Path

import torch
from torch import Tensor, nn

from imgcls.models.classifier import ImageClassifier
from imgcls.models.objectives import OBJECTIVES
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)


def read_class_map(path: str | Path, model_classes: int) -> dict[str, int]:
    """timm's class map: {the data's class name: the model's class index (its line)}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"class_map={path} is not a file: one data class name per line.")
    lines = [line.strip() for line in path.read_text().splitlines()]
    if len(lines) > model_classes:
        raise UserError(
            f"class_map={path} has {len(lines)} lines for a model of {model_classes} classes: "
            "line i names the data's class that is the model's class i."
        )
    return {name: index for index, name in enumerate(lines) if name}


def model_columns(
    model_names: list[str], data_names: list[str], class_map: str | None
) -> list[int] | None:
    """The model's class index of each of the data's classes (by name, or by `class_map`);
    None where they are the model's own classes in its order."""
    if class_map is None and data_names == model_names:
        return None
    where = (
        read_class_map(class_map, len(model_names))
        if class_map is not None
        else {name: i for i, name in enumerate(model_names)}
    )
    missing = [name for name in data_names if name not in where]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise UserError(
            f"The data has {len(missing)} classes the model has no class for ({shown}); the "
            f"model's are {', '.join(model_names[:5])}, ...: pass the data config the model was "
            "trained with, or class_map=FILE naming, on line i, the data's class that is the "
            "model's class i."
        )
    return [where[name] for name in data_names]


class ClassColumns(nn.Module):
    """A net whose logits are some of another net's, in the data's class order."""

    def __init__(self, net: nn.Module, columns: list[int]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("columns", torch.tensor(columns), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images).index_select(1, self.columns)


def scored_on(model: ImageClassifier, data_names: list[str], class_map: str | None) -> None:
    """The model, in place, scored on the data's classes: the columns of its logits that are
    theirs, its objective remade for them (the temperature kept; per-class thresholds and
    weights, theirs)."""
    columns = model_columns(model.class_names, data_names, class_map)
    if columns is None:
        return
    hparams, old, picked = model.hparams, model.objective, torch.tensor(columns)
    objective = OBJECTIVES[hparams.get("task", "multiclass")](
        len(columns),
        hparams.get("label_smoothing", 0.0),
        None,
        hparams.get("temperature"),
        hparams.get("threshold", 0.5),
    )
    weights = getattr(old.criterion, old.class_weight_name, None)
    if weights is not None:
        objective.set_class_weights(weights.index_select(0, picked).tolist())
    for name in old.fitted_on_validation:  # a temperature; thresholds, one per class
        value = old.get_buffer(name)
        objective.get_buffer(name).copy_(value.index_select(0, picked) if value.ndim else value)
    model.objective = objective
    model.net = ClassColumns(model.net, columns)
    model.head_name = f"net.{model.head_name}"
    # a compiled checkpoint's forward runs its compiled net: compile the one that picks columns
    compiled = torch.compile(model.net) if hparams.get("compile") else None
    object.__setattr__(model, "_compiled_net", compiled)
    log.info(
        f"Scoring {len(columns)} of the model's {len(model.class_names)} classes, as the data "
        f"names them ({', '.join(data_names[:3])}, ...)"
    )
    hparams.num_classes, hparams.class_names = len(columns), list(data_names)
