"""Loading our checkpoints: safely (no pickled code runs) and with one clear message on failure."""

from pathlib import Path

from imgcls.models.classifier import ImageClassifier
from imgcls.utils.errors import UserError


def load_classifier(ckpt_path: str | Path) -> ImageClassifier:
    path = Path(ckpt_path)
    if not path.is_file():
        raise UserError(
            f"No checkpoint at {path}. Pass ckpt_path=<run dir>/checkpoints/best.ckpt "
            "(runs are under logs/train/runs/)."
        )
    try:
        return ImageClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure here means the file is not one of our checkpoints
        raise UserError(f"Cannot load {path} as an imgcls checkpoint: {err}") from err
