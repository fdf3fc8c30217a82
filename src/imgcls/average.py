"""Average a run's checkpoints into one (`imgcls-average RUN --last 5` or `--best 5`): the weight
averaging of the last epochs that torchvision's and timm's recipes report on top of EMA, or of the
best ones (timm's avg_checkpoints.py, "model soups" of one run).

Floating-point tensors (weights and BatchNorm statistics; EMA checkpoints: their averaged
weights) are averaged in float64; integer buffers (BatchNorm's step count) are the newest
checkpoint's. A LoRA run's checkpoints are each merged into plain weights first (the mean of
the adapters' products is not the product of their means), and the average is a plain net. The
result is one of our checkpoints, evaluated as any other:
`python eval.py ckpt_path=<run>/checkpoints/average_last5.ckpt`. It keeps no optimizer state: it
is for evaluation, predict and export, not for resuming.

Which checkpoints exist is the run's `callbacks.model_checkpoint` choice: `save_top_k=5` keeps the
best five by its monitor; `save_top_k=-1` keeps every epoch's (for --last).
"""

import argparse
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from imgcls.models.classifier import RUN_LENGTH
from imgcls.models.loading import classifier_from_checkpoint, classifier_of, read_checkpoint
from imgcls.models.lora import lora_on, merged_weights
from imgcls.utils.atomic_save import AtomicCheckpointIO
from imgcls.utils.errors import UserError

EPOCH_FILE = re.compile(r"epoch_\d+\.ckpt$")
# the parts of a checkpoint that describe the model, kept from the newest one
KEPT = ("hyper_parameters", "epoch", "global_step", "pytorch-lightning_version", RUN_LENGTH)


def epoch_checkpoints(folder: Path) -> list[Path]:
    """The run's per-epoch checkpoints (not last.ckpt, best.ckpt or an average)."""
    return sorted(p for p in folder.glob("*.ckpt") if EPOCH_FILE.match(p.name) and p.is_file())


def monitor_of(checkpoint: dict[str, Any]) -> tuple[str, float | None]:
    """The monitored metric's name and this checkpoint's score, from ModelCheckpoint's state."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if key.startswith("CheckpointWithBestLink") or key.startswith("ModelCheckpoint"):
            score = state.get("current_score")
            return state.get("monitor") or "", None if score is None else float(score)
    return "", None


def mode_of(run_dir: Path, monitor: str) -> str:
    """max or min, as the run's checkpoint callback was told (its saved config), else by name."""
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.is_file():
        mode = OmegaConf.select(OmegaConf.load(saved), "callbacks.model_checkpoint.mode")
        if mode in ("max", "min"):
            return mode
    return "min" if "loss" in monitor else "max"


def choose(folder: Path, last: int | None, best: int | None) -> list[tuple[Path, dict]]:
    """(path, checkpoint) of the `last` newest or `best` best-scored per-epoch checkpoints."""
    # mapped, not read: only the chosen ones' tensors are read, when they are averaged
    found = [(p, read_checkpoint(p, mmap=True)) for p in epoch_checkpoints(folder)]
    wanted = last or best
    if len(found) < wanted:
        keep = f"save_top_k={wanted}" if best else "save_top_k=-1 (every epoch)"
        raise UserError(
            f"{folder} holds {len(found)} per-epoch checkpoints, {wanted} are needed: train with "
            f"callbacks.model_checkpoint.{keep}."
        )
    if last:
        found.sort(key=lambda pair: pair[1].get("global_step", 0))
        return found[-last:]
    monitor = monitor_of(found[0][1])[0]
    scores = [monitor_of(c)[1] for _, c in found]
    if None in scores:
        raise UserError(f"Some checkpoints in {folder} hold no {monitor or 'monitored'} score.")
    reverse = mode_of(folder.parent, monitor) == "max"
    ranked = sorted(zip(scores, range(len(found)), strict=True), reverse=reverse)
    picked = sorted(index for _, index in ranked[:best])
    return [found[i] for i in picked]


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of each floating-point tensor; the last state's integer tensors."""
    keys = states[0].keys()
    if any(s.keys() != keys for s in states):
        raise UserError("The checkpoints hold different tensors: they are not of one net.")
    averaged = {}
    for key in keys:
        newest = states[-1][key]
        if newest.is_floating_point():
            total = sum(s[key].double() for s in states)
            averaged[key] = (total / len(states)).to(newest.dtype)
        else:
            averaged[key] = newest.clone()
    return averaged


def average(
    run: Path, last: int | None = None, best: int | None = None, out: Path | None = None
) -> Path:
    """Average `last` or `best` N per-epoch checkpoints of `run` (a run dir or its checkpoints
    folder) into `out` (default: checkpoints/average_{last|best}N.ckpt), never over a file."""
    if (last is None) == (best is None) or (last or best) < 2:
        raise UserError("Say how many to average, 2 or more: --last N or --best N.")
    folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    out = out or folder / f"average_{'last' if last else 'best'}{last or best}.ckpt"
    if out.exists():
        raise UserError(f"{out} exists: remove it or pass --out PATH.")
    chosen = choose(folder, last, best)
    nets = {repr(c["hyper_parameters"].get("net")) for _, c in chosen}
    if len(nets) > 1:
        raise UserError(f"The checkpoints in {folder} are of different nets: {sorted(nets)}.")
    newest = chosen[-1][1]
    layout = classifier_of(newest["hyper_parameters"])  # today's keys, whatever wrote each
    for _, checkpoint in chosen:
        layout.on_load_checkpoint(checkpoint)
    merged = {key: newest[key] for key in KEPT if key in newest}
    lora = newest["hyper_parameters"].get("lora")
    states = [c["state_dict"] for _, c in chosen]
    if lora_on(lora):  # the mean of B @ A is not the product of the means: merge, then average
        states = [merged_weights(state, lora) for state in states]
        merged["hyper_parameters"] = {**newest["hyper_parameters"], "lora": None}
    merged["state_dict"] = average_states(states)
    merged["imgcls_averaged_from"] = [p.name for p, _ in chosen]
    classifier_from_checkpoint(merged, out)  # it loads as any checkpoint of ours
    AtomicCheckpointIO().save_checkpoint(merged, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a run dir, or its checkpoints folder")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--last", type=int, help="the N newest per-epoch checkpoints")
    which.add_argument("--best", type=int, help="the N best by the run's checkpoint monitor")
    parser.add_argument("--out", type=Path, help="default: checkpoints/average_{last|best}N.ckpt")
    args = parser.parse_args()
    try:
        out = average(args.run, args.last, args.best, args.out)
    except UserError as err:
        raise SystemExit(f"UserError: {err}") from None
    print(f"Averaged into {out}: python eval.py ckpt_path={out}")


if __name__ == "__main__":
    main()
