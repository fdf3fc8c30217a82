"""The framework tax: our Trainer path against a plain PyTorch loop written like seed 000's.

    python benchmarks/loop_overhead.py [--net cifar_quick] [--steps 150] [--epochs 3] [--repeats 5]

Both train the same net on the same in-memory uint8 batches (batch 128, 32 px, 10 classes),
normalized the same way; ours with the default callbacks (checkpointing, LR monitor, throughput,
rich progress bar and model summary) and the TensorBoard logger on. Steps/s is measured over the
epochs after the first (warm-up, allocations). Each repeat runs both, in alternating order; the
last line, `ratio imgcls/plain=<x>` (1.0 = no overhead), is the median of the repeats' ratios,
which cancels the slow drifts in speed this shared machine shows (+-15% between runs).
"""

import argparse
import statistics
import tempfile
import time

import lightning as L
import torch
from torch import nn
from torch.utils.data import TensorDataset

from imgcls.data.datamodule import ImageDataModule, Splits
from imgcls.models.backbones import build_net
from imgcls.train import build_components
from imgcls.utils.hydra_utils import compose_config, instantiate

BATCH = 128


class RandomTensors(ImageDataModule):
    """The benchmark's fixed batches as a data source of ours."""

    in_memory = True
    native_size = 32

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, **kwargs) -> None:
        super().__init__(batch_size=BATCH, **kwargs)
        self.data = TensorDataset(images, labels)

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(10)]

    def build_splits(self) -> Splits:
        return Splits(self.data, self.data, self.data)


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.durations: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.durations.append(time.perf_counter() - self._start)


def plain_loop(net_name: str, images: torch.Tensor, labels: torch.Tensor, epochs: int) -> float:
    """Seed 000's train(): zero_grad, forward, loss, backward, step, and its running sums."""
    torch.manual_seed(0)
    model = build_net(net_name, num_classes=10)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    normalizer = RandomTensors(images[:1], labels[:1])
    loader = torch.utils.data.DataLoader(
        TensorDataset(images, labels), batch_size=BATCH, shuffle=True
    )
    durations = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        running_loss, running_corrects = 0.0, 0
        for inputs, targets in loader:
            inputs = normalizer.normalize(inputs)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * inputs.size(0)
            running_corrects += torch.sum(outputs.argmax(1) == targets).item()
        durations.append(time.perf_counter() - start)
    steps = len(loader)
    return steps / statistics.mean(durations[1:])


def imgcls_loop(net_name: str, images: torch.Tensor, labels: torch.Tensor, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config(
            "train",
            [
                f"model.net.name={net_name}",
                "optimizer.lr=0.05",
                "scheduler=none",
                f"trainer.max_epochs={epochs}",
                "+trainer.limit_val_batches=0",
                "+trainer.num_sanity_val_steps=0",
                "extras.print_config=false",
                f"paths.log_dir={out}",
            ],
            output_dir=out,
        )
        objects = build_components(cfg)
        timer = EpochTimer()
        trainer = instantiate(
            cfg.trainer, callbacks=[*objects["callbacks"], timer], logger=objects["logger"]
        )
        trainer.fit(objects["model"], datamodule=RandomTensors(images, labels))
    return len(images) // BATCH / statistics.mean(timer.durations[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="cifar_quick")
    parser.add_argument("--steps", type=int, default=150, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    n = args.steps * BATCH
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    print(
        f"{args.net}, {args.steps} steps of batch {BATCH} per epoch, {args.epochs} epochs "
        f"(first is warm-up), {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    plain, ours = [], []
    for repeat in range(args.repeats):
        # paired and in alternating order, so a drift in machine speed hits both alike
        pair = [
            lambda: plain.append(plain_loop(args.net, images, labels, args.epochs)),
            lambda: ours.append(imgcls_loop(args.net, images, labels, args.epochs)),
        ]
        for measure in pair if repeat % 2 == 0 else pair[::-1]:
            measure()
    for name, rates in (("plain loop", plain), ("imgcls", ours)):
        runs = ", ".join(f"{r:.1f}" for r in rates)
        print(f"{name:>10}: {statistics.median(rates):.1f} steps/s  (runs: {runs})")
    ratios = [o / p for o, p in zip(ours, plain, strict=True)]
    print(f"ratio of the medians: {statistics.median(ours) / statistics.median(plain):.3f}")
    print(f"paired ratios: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"ratio imgcls/plain={statistics.median(ratios):.3f}  (median of the paired ratios)")


if __name__ == "__main__":
    main()
