"""Classify new images with a checkpoint: `python predict.py ckpt_path=... input=PATH` or
`imgcls-predict`.

Everything the model needs travels in the checkpoint (architecture, weights, class names, eval
resize / crop, mean / std, its temperature or its labels' thresholds), so this works on any
machine with the checkpoint alone. A timm model trained elsewhere takes a checkpoint's place:
`ckpt_path=timm/local-dir:DIR` or `ckpt_path=timm/hf-hub:<user>/<repo>`, its class names from its
config's `label_names`, its preprocessing from its pretrained config. One label per image: the
top_k classes, most probable first; several (model.task=multilabel): every label whose
probability reaches its threshold. Images of any mode (RGBA, grayscale, palette, CMYK, 16-bit)
are converted to RGB; a file that is not a readable image gets a row with its error instead of
stopping the batch.

`explain=true`: each image's Grad-CAM map of its top class (models/explain.py) laid over the
image as the net saw it, `explanations/<its path below the inputs' common folder>.png` beside
predictions.csv (a tree as the inputs', so same-named files in two folders keep two maps), its
path in the `explanation` column.
"""

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from imgcls.data.augmentation.presets import resize_center_crop
from imgcls.data.decoding.images import IMAGE_SUFFIXES, BadImageError, read_rgb
from imgcls.data.loaders import auto_workers
from imgcls.data.sources.files import list_images
from imgcls.input_contract import IMAGENET_MEAN, IMAGENET_STD, InputContract
from imgcls.models.explain import Explainer
from imgcls.models.loading import load_classifier
from imgcls.reports.plots import cam_overlay, save_png
from imgcls.run.settle import settle
from imgcls.run.task import task_main
from imgcls.utils.atomic_save import written_whole
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.paths import PATH_TEXT, shown

log = get_logger(__name__)
OUTPUT_FORMATS = ("csv", "json")


def list_inputs(source: str | Path) -> list[Path]:
    """The images named by `source`: one image, every image below a folder, or the paths listed
    in a .txt file (relative ones are taken from the list's own folder)."""
    path = Path(source).expanduser()
    if path.is_dir():
        images = list_images(path, tree=path)
    elif path.suffix.lower() == ".txt" and path.is_file():
        lines = [line.strip() for line in path.read_text(**PATH_TEXT).splitlines()]
        images = [path.parent / p if not Path(p).is_absolute() else Path(p) for p in lines if p]
    elif path.is_file():
        images = [path]
    else:
        raise UserError(f"input={source} does not exist: pass an image, a folder or a .txt list.")
    if not images:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise UserError(f"No images found in {source} (image files end in {kinds}).")
    return images


class ImagePaths(Dataset):
    """(uint8 image at the eval size, error message or "") per path; a bad file gives a blank."""

    def __init__(self, paths: list[Path], resize: int, crop: int) -> None:
        self.paths = paths
        self.resize = resize
        self.transform = resize_center_crop(resize, crop)
        self.blank = torch.zeros(3, crop, crop, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            return self.transform(read_rgb(self.paths[index], min_side=self.resize)), ""
        except (BadImageError, OSError) as err:
            return self.blank, str(err)


@dataclass
class Prediction:
    path: str
    classes: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str = ""
    explanation: str = ""  # its heat map, relative to the output dir (explain=true)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise UserError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N.") from err


def checkpoint_contract(saved: dict[str, Any], cfg: DictConfig) -> InputContract:
    """The checkpoint's input contract; `resize` / `crop` in the config override its sizes."""
    resize, crop = cfg.resize or saved.get("resize"), cfg.crop or saved.get("crop")
    if not (resize and crop):
        raise UserError(
            f"{cfg.ckpt_path} does not record its input size (an older checkpoint): pass "
            "resize=<short side> crop=<size>, e.g. resize=256 crop=224."
        )
    if "mean" not in saved:
        log.warning("The checkpoint records no mean/std: normalizing with ImageNet's.")
    mean, std = saved.get("mean", IMAGENET_MEAN), saved.get("std", IMAGENET_STD)
    return InputContract(int(resize), int(crop), tuple(mean), tuple(std))


def explanation_names(paths: list[Path]) -> list[Path]:
    """Where each image's heat map goes below `explanations/`: its path below the images'
    common folder, `.png` added (a.jpg and a.png stay apart, as do two folders' a.jpg)."""
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    return [Path(os.path.relpath(p, root) + ".png") for p in absolute]


def predict(cfg: DictConfig) -> list[Prediction]:
    """Not under inference mode whole: explain=true needs gradients of a net loaded outside it
    (a parameter made under it cannot be saved for a backward pass)."""
    settle(cfg)
    if not cfg.get("ckpt_path") or not cfg.get("input"):
        raise UserError(
            "predict needs ckpt_path=<run>/checkpoints/best.ckpt (or a timm model with its "
            "weights: timm/local-dir:<folder>, timm/hf-hub:<user>/<repo>) and input=PATH."
        )
    if cfg.output_format not in OUTPUT_FORMATS:
        raise UserError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}.")
    if not isinstance(cfg.explain, bool):
        raise UserError(f"explain must be true or false, got {cfg.explain!r}.")
    device = resolve_device(cfg.device)
    model = load_classifier(cfg.ckpt_path).to(device)
    contract = checkpoint_contract(model.hparams.get("preprocessing") or {}, cfg)

    paths = list_inputs(cfg.input)
    workers = auto_workers() if cfg.num_workers == "auto" else int(cfg.num_workers)
    workers = min(workers, max(0, (len(paths) - 1) // cfg.batch_size))  # none for one batch
    loader = DataLoader(
        ImagePaths(paths, contract.resize, contract.crop),
        batch_size=cfg.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    top_k = min(cfg.top_k, model.hparams.num_classes)
    names = model.class_names
    output_dir = Path(cfg.paths.output_dir)
    explainer, heat_maps = None, []
    if cfg.explain:  # a net it cannot explain is refused before any image is read
        blank = torch.zeros(1, 3, contract.crop, contract.crop, device=device)
        explainer = Explainer(model.net, blank, getattr(model, "head", None))
        heat_maps = explanation_names(paths)
    predictions = []
    done = 0
    for pixels, errors in loader:
        with torch.inference_mode():
            images = contract.normalize(pixels.to(device, non_blocking=True))
            logits = model.eval_logits(images, tta_flip=cfg.tta_flip or None)
            probs, indices = model.probabilities(logits).sort(dim=1, descending=True)
            # one label per image: the top k; several: every label at or above its threshold
            listed = model.objective.listed(probs, indices, top_k).cpu()
            probs, indices = probs.cpu(), indices.cpu()
        if explainer is not None:  # the top class of each, the batch at once
            overlays = cam_overlay(pixels, explainer(images, indices[:, 0]))
        for i, error in enumerate(errors):
            path = str(paths[done + i])
            if error:
                predictions.append(Prediction(path, error=error))
                continue
            kept = listed[i]
            classes = [names[j] for j in indices[i][kept].tolist()]
            predictions.append(Prediction(path, classes, probs[i][kept].tolist()))
            if explainer is not None:
                relative = Path("explanations") / heat_maps[done + i]
                (output_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                save_png(overlays[i].permute(1, 2, 0).numpy(), str(output_dir / relative))
                predictions[-1].explanation = str(relative)
        done += len(errors)
    columns = max([top_k, *(len(p.classes) for p in predictions)])
    write_predictions(predictions, columns, output_dir, cfg.output_format, bool(cfg.explain))
    if cfg.explain:
        log.info(f"Heat maps of the top class: {output_dir / 'explanations'}")
    print_predictions(predictions, cfg.print_rows)
    return predictions


def write_predictions(
    predictions: list[Prediction],
    top_k: int,
    output_dir: Path,
    output_format: str,
    explained: bool = False,
) -> None:
    """predictions.csv (and .json); `explained`: with each image's heat map's path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path = output_dir / "predictions.csv"
    with written_whole(csv_path) as staged, open(staged, "w", newline="", **PATH_TEXT) as f:
        writer = csv.writer(f)
        ranks = [(f"class_{r}", f"prob_{r}") for r in range(1, top_k + 1)]
        extra = ["explanation"] if explained else []
        writer.writerow(["path", *[name for pair in ranks for name in pair], "error", *extra])
        for p in predictions:
            cells = [c for pair in zip(p.classes, p.probabilities, strict=True) for c in pair]
            cells = [f"{c:.6f}" if isinstance(c, float) else c for c in cells]
            heat_map = [p.explanation] if explained else []
            writer.writerow([p.path, *cells, *[""] * (2 * top_k - len(cells)), p.error, *heat_map])
    files = ["predictions.csv"]
    if output_format == "json":
        rows: list[dict[str, Any]] = [
            {
                "path": p.path,
                "top": [
                    {"class": c, "probability": q}
                    for c, q in zip(p.classes, p.probabilities, strict=True)
                ],
                **({"error": p.error} if p.error else {}),
                **({"explanation": p.explanation} if p.explanation else {}),
            }
            for p in predictions
        ]
        with written_whole(output_dir / "predictions.json") as staged:
            staged.write_text(json.dumps(rows, indent=2) + "\n")
        files.append("predictions.json")
    written = ", ".join(str(output_dir / f) for f in files)
    log.info(f"Predictions for {len(predictions)} images: {written}")


def print_predictions(predictions: list[Prediction], rows: int) -> None:
    table = Table(title=f"Predictions ({len(predictions)} images)")
    table.add_column("image", overflow="fold")
    table.add_column("top classes (probability)")
    for p in predictions[:rows]:
        if p.error:
            table.add_row(shown(p.path), f"[red]not read: {p.error}")
        else:
            tops = zip(p.classes, p.probabilities, strict=True)
            table.add_row(shown(p.path), ", ".join(f"{c} ({q:.1%})" for c, q in tops))
    if len(predictions) > rows:
        table.caption = f"first {rows} of {len(predictions)}: all are in the output file"
    Console().print(table)
    bad = sum(1 for p in predictions if p.error)
    if bad:
        log.warning(f"{bad} of {len(predictions)} files could not be read (see the error column).")


main = task_main("predict", predict)


if __name__ == "__main__":
    main()
