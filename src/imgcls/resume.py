"""Where a resumed run continues: `ckpt_path=last` (the newest run's last.ckpt) or a path, and
the checks that make a wrong checkpoint one clear line instead of a size-mismatch traceback.

A checkpoint inside `<run>/checkpoints/` resumes into `<run>`: its checkpoints, TensorBoard and
CSV logs, metrics and status continue there, and the epoch count goes on. (Hydra's own dir for
the resuming command keeps only its config and log.)
"""

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from imgcls.models.loading import read_checkpoint
from imgcls.utils.compose import set_in_struct
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)
LAST = "last"


def newest_last_checkpoint(runs_dir: Path, exclude: Path) -> Path:
    found = [
        p
        for p in runs_dir.glob("**/checkpoints/last.ckpt")
        if exclude.resolve() not in p.resolve().parents
    ]
    if not found:
        raise UserError(
            f"ckpt_path=last found no last.ckpt under {runs_dir}: pass ckpt_path=<path> instead."
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def resolve_resume(cfg: DictConfig) -> dict[str, Any] | None:
    """Turn `ckpt_path` into a file and point `paths.output_dir` at the run it belongs to.
    Returns the checkpoint's hyperparameters, for `check_checkpoint_fits`."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt or not cfg.get("train"):
        return None
    output_dir = Path(cfg.paths.output_dir)
    if ckpt == LAST:
        ckpt = newest_last_checkpoint(Path(cfg.paths.log_dir) / cfg.task_name, output_dir)
    ckpt = Path(ckpt).resolve()
    hparams = read_checkpoint(ckpt, mmap=True)["hyper_parameters"]  # tensors stay unread
    set_in_struct(cfg, "ckpt_path", str(ckpt))
    if ckpt.parent.name == "checkpoints" and ckpt.parent.parent != output_dir.resolve():
        run_dir = ckpt.parent.parent
        log.info(f"Resuming {ckpt} into its run dir {run_dir}")
        set_in_struct(cfg, "paths.output_dir", str(run_dir))
    return hparams


def check_checkpoint_fits(
    saved: dict[str, Any], ckpt: str, net_name: str, class_names: list[str]
) -> None:
    """The checkpoint's net and classes against the run's, before any weights are loaded."""
    if saved["net"]["name"] != net_name:
        raise UserError(
            f"{ckpt} holds a {saved['net']['name']} but the config builds a {net_name}: resume "
            f"with model.net.name={saved['net']['name']} (and the rest of its config)."
        )
    saved_classes = list(saved.get("class_names") or [])
    if saved_classes and saved_classes != class_names:
        raise UserError(
            f"{ckpt} was trained on {len(saved_classes)} classes ({', '.join(saved_classes[:4])}"
            f", ...) but the data has {len(class_names)} ({', '.join(class_names[:4])}, ...): "
            "resume with the data config it was trained on."
        )
