"""CIFAR-10 test accuracy against training time: Caffe's CIFAR10-quick recipe vs cifar10_fast.

    python benchmarks/cifar10_time_to_accuracy.py --data data/cifar10-jpg --minutes 10
    python benchmarks/cifar10_time_to_accuracy.py --data data/cifar10-jpg --recipe cifar10_fast \\
        --seeds 5 trainer.accelerator=gpu                  # on a GPU: mean +- std over 5 seeds

--data is CIFAR-10 as JPEG class folders (train/, test/), from ../shared/data/cifar10-jpg.tar.xz.
Each recipe trains with the images held in memory (on the GPU when there is one), 1,000 training
images set aside for validation, then tests its best checkpoint on the 10,000 test images (with
the recipe's test-time augmentation). `--minutes` caps each run's fit (trainer.max_time).

Two clocks per run:
- training time, counted as airbench counts it: the preparation before the first epoch (moving
  the model, the data-dependent init), the training epochs and the final test-time-augmented
  evaluation, the device synchronized at each end; not data loading, not the per-epoch
  validation, not writing reports. On a GPU an untimed one-epoch warm-up run comes first (cuDNN
  autotuning), as airbench does.
- wall time: everything, loading and reports included.
Each epoch's validation accuracy is printed with the training time it was reached at.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from imgcls.run.compose import compose_config
from imgcls.train import train

RECIPES = {"Caffe's CIFAR10-quick (cifar10_quick)": "cifar10_quick", "cifar10_fast": "cifar10_fast"}
CIFAR_STATS = ["data.mean=[0.4914,0.4822,0.4465]", "data.std=[0.2470,0.2435,0.2616]"]


def synchronize(module: L.LightningModule) -> None:
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)


class TrainingClock(L.Callback):
    """Training time as airbench counts it, and each epoch's validation accuracy against it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.curve: list[tuple[float, int, float]] = []  # (training s, epochs done, val acc)
        self._start: float | None = None  # while the clock runs

    def _begin(self, module: L.LightningModule) -> None:
        synchronize(module)
        self._start = time.perf_counter()

    def _stop(self, module: L.LightningModule) -> None:
        if self._start is not None:
            synchronize(module)
            self.seconds += time.perf_counter() - self._start
            self._start = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._start = time.perf_counter()  # preparation: to device, data-dependent init

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(pl_module)  # the preparation, before the first epoch
        self._begin(pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if i == trainer.num_training_batches - 1:
            self._stop(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(pl_module)  # an epoch cut short by trainer.max_time ends here
        # this epoch's validation has run and logged val/acc (callbacks' validation-end hooks
        # run before the module's, so they would read the previous epoch's)
        if "val/acc" in trainer.callback_metrics:
            acc = float(trainer.callback_metrics["val/acc"])
            self.curve.append((self.seconds, trainer.current_epoch + 1, acc))

    def on_test_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int, *_: Any
    ) -> None:
        if i == 0:
            self._begin(pl_module)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        i: int,
        *_: Any,
    ) -> None:
        if i == trainer.num_test_batches[0] - 1:
            self._stop(pl_module)


def run(
    experiment: str, data: Path, minutes: float, seed: int, out: Path, extra: list[str]
) -> dict[str, Any]:
    overrides = [
        f"experiment={experiment}",
        f"seed={seed}",
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
        "+trainer.num_sanity_val_steps=0",
        "+callbacks.clock._target_=__main__.TrainingClock",
        "extras.print_config=false",
        "callbacks.rich_progress_bar=null",
        f"paths.log_dir={out}",
    ]
    if experiment == "cifar10_quick":
        overrides.append("trainer.max_epochs=1000")  # trains until the time is up
    cfg = compose_config("train", [*overrides, *extra], output_dir=out / f"{experiment}_{seed}")
    start = time.perf_counter()
    metrics, objects = train(cfg)
    (clock,) = (c for c in objects["callbacks"] if isinstance(c, TrainingClock))
    return {
        "acc": metrics["test/acc"],
        "train_s": clock.seconds,
        "wall_s": time.perf_counter() - start,
        "curve": clock.curve,
    }


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4g} +- {spread:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=10, help="cap on each run's fit")
    parser.add_argument("--seeds", type=int, default=1, help="runs per recipe (seeds 0..N-1)")
    parser.add_argument(
        "--recipe", action="append", choices=RECIPES.values(), help="run only this (repeatable)"
    )
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{device}, {torch.get_num_threads()} threads, fit capped at {args.minutes} min a run")
    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        out, data = Path(tmp), args.data.resolve()
        for name, experiment in RECIPES.items():
            if args.recipe and experiment not in args.recipe:
                continue
            if torch.cuda.is_available():  # cuDNN autotuning and allocations, untimed
                run(
                    experiment,
                    data,
                    args.minutes,
                    0,
                    out,
                    [*args.overrides, "trainer.max_epochs=1"],
                )
            results = []
            for seed in range(args.seeds):
                result = run(experiment, data, args.minutes, seed, out, args.overrides)
                results.append(result)
                points = ", ".join(f"({t:.1f} s, {e}, {a:.3f})" for t, e, a in result["curve"])
                print(
                    f"{name} seed {seed}: test accuracy {result['acc']:.4f}, training time "
                    f"{result['train_s']:.2f} s, wall time {result['wall_s']:.0f} s\n"
                    f"  (training s, epochs, val acc): {points}",
                    flush=True,
                )
            summary[name] = results
    for name, results in summary.items():
        accs = [r["acc"] for r in results]
        times = [r["train_s"] for r in results]
        print(
            f"{name}: test accuracy {mean_std(accs)}, training time {mean_std(times)} s "
            f"({len(results)} seed{'s' if len(results) > 1 else ''})"
        )


if __name__ == "__main__":
    main()
