"""Where a resumed run continues: `ckpt_path=last` (the newest run of the same command) or a
path, and the checks that make a wrong checkpoint one clear line instead of a size-mismatch
traceback.

A checkpoint inside `<run>/checkpoints/` resumes into `<run>`: its checkpoints, TensorBoard and
CSV logs, metrics and status continue there, and the epoch count goes on. (Hydra's own dir for
the resuming command keeps only its config and log.) A run that is still training (it holds its
dir: run/dirs.py) is never resumed into.

`ckpt_path=last` takes the newest `last.ckpt` of a run started with the same overrides, ignoring
those free to change on a resume (FREE_ON_RESUME: where it logs and what watches it, and the
run's length), and says which it took; a run of another command is never picked. A run made
longer or shorter stretches an LR schedule laid over it (models/optim.py: StretchOnLoad).
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from imgcls.models.classifier import RUN_LENGTH
from imgcls.models.loading import read_checkpoint
from imgcls.models.optim import RUN_LENGTH_KEYS, run_length
from imgcls.models.zoo import PRETRAINED_KEYS
from imgcls.run.dirs import describe, holder
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)
LAST = "last"
# net settings a checkpoint's weights override: where the initial weights came from, the head's
# init; and gradient checkpointing (memory against compute: a resume may switch it)
NOT_THE_NETS_SHAPE = {*PRETRAINED_KEYS, "head_init", "grad_checkpointing"}
# overrides a resume may change: the checkpoint, where the run logs, what watches it, and the
# run's length (an LR schedule laid over the run stretches to it)
FREE_ON_RESUME = (
    "ckpt_path",
    "callbacks",
    "logger",
    "extras",
    "paths",
    "hydra",
    "trainer.max_epochs",
    "trainer.max_steps",
)


def recipe(overrides: list[str]) -> list[str]:
    """A command's overrides that decide what it trains, sorted."""
    kept = []
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if not any(key == free or key.startswith(f"{free}.") for free in FREE_ON_RESUME):
            kept.append(override)
    return sorted(kept)


def run_overrides(run_dir: Path) -> list[str] | None:
    """The overrides a run was started with (Hydra's record), or None where none is kept."""
    try:
        return list(yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or [])
    except (FileNotFoundError, yaml.YAMLError):
        return None


def command_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def newest_last_checkpoint(runs_dir: Path) -> Path:
    """The newest last.ckpt under `runs_dir` of a run of this command that is not training
    (this command's own dir included: a cluster job restarted into the dir it shares)."""
    ours = recipe(command_overrides())
    busy, others = [], []
    found = sorted(runs_dir.glob("**/checkpoints/last.ckpt"), key=lambda p: -p.stat().st_mtime)
    for ckpt in found:
        run = ckpt.parent.parent
        overrides = run_overrides(run)  # [] for a run started with none: that is a recipe too
        if overrides is None or recipe(overrides) != ours:
            others.append(run)
        elif (owner := holder(run)) is not None:
            busy.append(describe(owner, run))
        else:
            log.info(f"ckpt_path=last: resuming {ckpt}, the newest run of this command")
            return ckpt
    said = " ".join(ours) or "no overrides"
    reasons = [f"ckpt_path=last found no last.ckpt of this command ({said}) under {runs_dir}"]
    reasons += busy
    if others:
        reasons.append(f"the newest run of another command is {others[0]}")
    raise UserError("; ".join(reasons) + ": pass ckpt_path=<path to a last.ckpt> instead.")


@dataclass(frozen=True)
class Resume:
    """Where a resumed run continues: the checkpoint, its contents (tensors mapped, not read),
    and the run dir it belongs to (None: this command's own dir)."""

    ckpt: Path
    checkpoint: dict[str, Any]
    run_dir: Path | None


def resume_target(cfg: DictConfig) -> Resume | None:
    """What `ckpt_path` names (`last` or a path), and the run dir it continues in; the config
    is left as it is (run/settle.py writes both into it)."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt or not cfg.get("train"):
        return None
    output_dir = Path(cfg.paths.output_dir)
    if ckpt == LAST:
        ckpt = newest_last_checkpoint(Path(cfg.paths.log_dir) / cfg.task_name)
    ckpt = Path(ckpt).resolve()
    checkpoint = read_checkpoint(ckpt, mmap=True)  # tensors stay unread
    run_dir = None
    if ckpt.parent.name == "checkpoints" and ckpt.parent.parent != output_dir.resolve():
        run_dir = ckpt.parent.parent
        if (owner := holder(run_dir)) is not None:
            raise UserError(describe(owner, run_dir) + ": wait for it, or resume another run.")
        log.info(f"Resuming {ckpt} into its run dir {run_dir}")
    return Resume(ckpt, checkpoint, run_dir)


def same_numbers(a: list[float], b: list[float] | str) -> bool:
    return (
        isinstance(b, list)
        and len(a) == len(b)
        and all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(a, b, strict=True))
    )


def check_checkpoint_fits(resume: Resume, cfg: DictConfig, class_names: list[str]) -> None:
    """The checkpoint's net, classes and run length against the run's, before any weights are
    loaded (and before the run is pointed at the checkpoint's dir: a refusal leaves it as it
    was)."""
    checkpoint, ckpt, net_name = resume.checkpoint, resume.ckpt, cfg.model.net.name
    saved = checkpoint["hyper_parameters"]
    if saved["net"]["name"] != net_name:
        raise UserError(
            f"{ckpt} holds a {saved['net']['name']} but the config builds a {net_name}: resume "
            f"with model.net.name={saved['net']['name']} (and the rest of its config)."
        )
    ours = OmegaConf.to_container(cfg.model.net, resolve=True)
    differ = sorted(
        key
        for key in set(saved["net"]) | set(ours)
        if key not in NOT_THE_NETS_SHAPE and saved["net"].get(key) != ours.get(key)
    )
    if differ:  # one line, not a size mismatch per tensor

        def said(net: dict[str, Any]) -> str:
            return ", ".join(f"{k}={net[k]}" if k in net else f"{k} by default" for k in differ)

        fix = " ".join(
            f"model.net.{k}={saved['net'][k]}" if k in saved["net"] else f"~model.net.{k}"
            for k in differ
        )
        raise UserError(
            f"{ckpt} holds a {net_name} built with {said(saved['net'])} but the config builds it "
            f"with {said(ours)}: resume with {fix}."
        )
    saved_weights, weights = saved.get("class_weights"), cfg.model.get("class_weights")
    given = list(weights) if OmegaConf.is_list(weights) else weights
    # none against some, or other numbers ("balanced" is worked out again from the same data)
    if (saved_weights is None) != (given is None) or (
        isinstance(given, list) and not same_numbers(given, saved_weights)
    ):
        raise UserError(
            f"{ckpt} was trained with model.class_weights={saved_weights} but the config has "
            f"{given}: resume with the class weights it was trained with."
        )
    saved_classes = list(saved.get("class_names") or [])
    if saved_classes and saved_classes != class_names:
        raise UserError(
            f"{ckpt} was trained on {len(saved_classes)} classes ({', '.join(saved_classes[:4])}"
            f", ...) but the data has {len(class_names)} ({', '.join(class_names[:4])}, ...): "
            "resume with the data config it was trained on."
        )
    check_epochs_left(resume, cfg.trainer.max_epochs)


def check_epochs_left(resume: Resume, max_epochs: int) -> None:
    """Another trainer.max_epochs, longer or shorter, stretches a schedule laid over the run to
    the new length (models/optim.py: StretchOnLoad) while the run has epochs left: where the
    checkpoint has trained them all already, one line, before any write."""
    checkpoint, ckpt = resume.checkpoint, resume.ckpt
    planned = checkpoint.get(RUN_LENGTH, {}).get("max_epochs")
    scheduler = checkpoint["hyper_parameters"].get("scheduler") or {}
    spans_the_run = any(key in scheduler and scheduler[key] is None for key in RUN_LENGTH_KEYS)
    state = (checkpoint.get("lr_schedulers") or [{}])[0]
    length = run_length(state)  # the planned epochs, in the schedule's steps
    if not spans_the_run or planned in (None, max_epochs) or length is None or max_epochs < 1:
        return  # (max_epochs=-1, no limit: the schedule asks for a length itself)
    done = state["last_epoch"] * planned / length
    if done >= max_epochs:
        name = str(scheduler["_target_"]).rsplit(".", 1)[-1]
        raise UserError(
            f"{ckpt} has trained {done:.3g} of its {planned} epochs: trainer.max_epochs="
            f"{max_epochs} leaves none to stretch its {name} schedule over: resume with "
            f"trainer.max_epochs above {done:.3g}."
        )
