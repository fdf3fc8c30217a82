"""Loading our checkpoints: safely (no pickled code runs) and with one clear message on failure."""

import inspect
import zipfile
from pathlib import Path
from typing import Any

import torch

from imgcls.models.classifier import ImageClassifier
from imgcls.models.exported import classifier_from_export, names_an_export
from imgcls.models.lora import lora_on, merged_weights
from imgcls.models.zoo import PRETRAINED_KEYS, names_a_pretrained_net, pretrained_hyperparameters
from imgcls.utils.errors import UserError, one_line


def read_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint as plain data. `mmap=True` maps the tensors instead of reading them, for
    callers that need only its hyperparameters."""
    if not path.is_file():
        raise UserError(
            f"No checkpoint at {path}. Pass ckpt_path=<run dir>/checkpoints/best.ckpt "
            "(runs are under logs/train/runs/)."
        )
    if not zipfile.is_zipfile(path):  # torch.save and Lightning write zip archives
        with open(path, "rb") as f:
            damaged = f.read(4) == b"PK\x03\x04"
        raise UserError(
            f"Cannot load {path}: "
            + (
                "the file is damaged (truncated or partly written)."
                if damaged
                else "it is not a checkpoint (torch.save writes zip archives; this is not one). "
                "Pass ckpt_path=<run dir>/checkpoints/best.ckpt (runs are under logs/train/runs/)."
            )
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # pickled objects, truncated files, not a torch file at all
        raise UserError(f"Cannot load {path} as an imgcls checkpoint: {one_line(err)}") from err
    if not isinstance(checkpoint, dict) or "hyper_parameters" not in checkpoint:
        raise UserError(f"{path} is not an imgcls checkpoint (it has no hyper_parameters).")
    return checkpoint


def load_classifier(ckpt_path: str | Path) -> ImageClassifier:
    """The model of one of our checkpoints, of a file export.py wrote (models/exported.py), or
    a timm model with its own weights and as its config describes it (`timm/local-dir:DIR`,
    `timm/hf-hub:<user>/<repo>`: models/zoo.py)."""
    if names_a_pretrained_net(ckpt_path):
        hparams = pretrained_hyperparameters(str(ckpt_path))
        thresholds = hparams.pop("thresholds", None)
        model = ImageClassifier(**hparams).eval()
        if thresholds is not None:  # a multi-label model imgcls-push wrote
            model.objective.use_thresholds(thresholds, model.class_names)
        return model
    if names_an_export(ckpt_path):  # export.py's file, run as its users run it
        return classifier_from_export(ckpt_path)
    path = Path(ckpt_path)
    return classifier_from_checkpoint(read_checkpoint(path), path)


def classifier_of(hyper_parameters: dict[str, Any]) -> ImageClassifier:
    """The model a checkpoint's hyperparameters describe, on the CPU, its net built without
    pretrained weights (nothing downloads) and not yet given the checkpoint's."""
    hparams = dict(hyper_parameters)
    hparams["net"] = {**hparams["net"], **PRETRAINED_KEYS}
    # settings older versions kept in the model (freezing, sync BatchNorm, head lr) are not
    # the rebuilt model's business: evaluation needs none of them
    known = inspect.signature(ImageClassifier.__init__).parameters
    return ImageClassifier(**{k: v for k, v in hparams.items() if k in known})


def classifier_from_checkpoint(checkpoint: dict[str, Any], path: Path) -> ImageClassifier:
    """The model a read checkpoint holds, on the CPU, rebuilt from its own hyperparameters, with
    the checkpoint's weights (read as today's model expects them: models/migration.py). A LoRA
    run's adapters come merged into its weights: the plain net, as eval, predict, export and a
    teacher take it (its `hparams.lora` still says how it was trained; peft not imported)."""
    try:
        lora = checkpoint["hyper_parameters"].get("lora")
        model = classifier_of({**checkpoint["hyper_parameters"], "lora": None})
        model.on_load_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        if lora_on(lora):
            state = merged_weights(state, lora)
            model.hparams.lora = lora
        model.load_state_dict(state)
    except (TypeError, RuntimeError, KeyError) as err:
        raise UserError(f"Cannot load {path} as an imgcls checkpoint: {one_line(err)}") from err
    return model.eval()
