"""Test accuracy within a wall-clock budget on this machine: seed 002's recipe vs cifar10_fast.

    python benchmarks/cifar10_time_to_accuracy.py --minutes 10 --data data/cifar10-jpg

--data is CIFAR-10 as JPEG class folders (train/, test/), from ../shared/data/cifar10-jpg.tar.xz.
Each recipe trains for at most `--minutes` of fit time (trainer.max_time) with the images held in
memory, 1,000 training images set aside for validation, then tests its best checkpoint on the
10,000 test images (with flip TTA where the recipe uses it). The whole wall time, loading and
testing included, is reported with the accuracy, and each epoch's validation accuracy with the
time it was reached (the accuracy-vs-time curve).
"""

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from imgcls.train import train
from imgcls.utils.hydra_utils import compose_config

RECIPES = {"seed002 (cifar10_quick)": "cifar10_quick", "imgcls cifar10_fast": "cifar10_fast"}
CIFAR_STATS = ["data.mean=[0.4914,0.4822,0.4465]", "data.std=[0.2470,0.2435,0.2616]"]


class Curve(L.Callback):
    """Each epoch's validation accuracy, with the seconds since the run's objects were built."""

    def __init__(self) -> None:
        self.start, self.points = time.perf_counter(), []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # by now this epoch's validation has run and the module has logged its val/acc (callbacks'
        # on_validation_epoch_end hooks run before the module's, so they would read the last one)
        if "val/acc" in trainer.callback_metrics:
            acc = float(trainer.callback_metrics["val/acc"])
            self.points.append((time.perf_counter() - self.start, trainer.current_epoch + 1, acc))


def run(
    experiment: str, data: Path, minutes: float, out: str, extra: list[str]
) -> tuple[float, float, list]:
    overrides = [
        f"experiment={experiment}",
        "data=folder",
        f"data.root={data}",
        "data.in_memory=true",
        "data.split=[0.98,0.02,0.0]",  # val: 2% of train/ (1,000); test/ is the test split
        *CIFAR_STATS,
        "data.train_crop=32",
        "data.eval_resize=32",
        "data.eval_crop=32",
        f"+trainer.max_time={{minutes: {minutes}}}",
        "trainer.min_epochs=0",  # the time limit is hard
        "+callbacks.curve._target_=__main__.Curve",
        "extras.print_config=false",
        "callbacks.rich_progress_bar=null",
        f"paths.log_dir={out}",
        *extra,
    ]
    if experiment == "cifar10_quick":
        overrides.append("trainer.max_epochs=1000")  # seed 002 trains until the time is up
    cfg = compose_config("train", overrides, output_dir=Path(out) / experiment)
    start = time.perf_counter()
    metrics, objects = train(cfg)
    (curve,) = (c for c in objects["callbacks"] if isinstance(c, Curve))
    return metrics["test/acc"], time.perf_counter() - start, curve.points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument(
        "--recipe", action="append", choices=RECIPES.values(), help="run only this (repeatable)"
    )
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every recipe")
    args = parser.parse_args()
    print(f"budget {args.minutes} min of training per recipe, {torch.get_num_threads()} threads")
    results = {}
    with tempfile.TemporaryDirectory() as out:
        for name, experiment in RECIPES.items():
            if args.recipe and experiment not in args.recipe:
                continue
            acc, wall, curve = run(
                experiment, args.data.resolve(), args.minutes, out, args.overrides
            )
            results[name] = acc
            points = ", ".join(f"({t:.0f} s, {e} epochs, {a:.3f})" for t, e, a in curve)
            print(f"{name}: test accuracy {acc:.4f} after {wall:.0f} s wall time")
            print(f"  validation accuracy over time: {points}", flush=True)
    for name, acc in results.items():
        print(f"{name}: {acc:.4f}")


if __name__ == "__main__":
    main()
