"""The framework tax: our Trainer path against plain PyTorch loops, on the same device.

    python benchmarks/loop_overhead.py                        # cifar_quick, 32 px, batch 128
    python benchmarks/loop_overhead.py --device cuda --net fast_cifar --batch 1024 \\
        --precision bf16-mixed --channels-last --steps 48
    python benchmarks/loop_overhead.py --device cuda --net resnet50 --size 224 --batch 256 \\
        --precision bf16-mixed --channels-last --steps 50 [--compile] [--loops device,imgcls]

Four loops train the same net on the same random uint8 images (10 classes), normalized the same
way, with the same SGD:
- plain, host data: a DataLoader over the images held on the host, each batch copied to the
  device (what most hand-written loops do);
- plain, device data: the images held on the device, each batch indexed there (airbench's loop);
- bare Lightning: the device-data loop as a minimal LightningModule in a Trainer with no
  callbacks, loggers, progress bar or checkpoints: Lightning's own cost per step;
- imgcls: `train.py`'s Trainer with the default callbacks and the TensorBoard + CSV loggers.
Each loop's time a step is printed in microseconds, and the differences: bare Lightning less the
plain device loop is Lightning's share, imgcls less bare Lightning is ours.
The plain loops are written as a careful engineer would: no host read per step (the loss sum
stays on the device and is read once per epoch). Images/s is measured over each epoch's steps
(the device synchronized at both ends; end-of-epoch work such as checkpointing is left out of
all three), for the epochs after the first (warm-up, compilation, allocations). Repeats are
paired and rotated (paired.py): each figure is a median with its spread beside it.
"""

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from imgcls.data.datamodule import ImageDataModule, Splits
from imgcls.models.zoo import build_net
from imgcls.run.compose import compose_config, instantiate
from imgcls.train import build_components
from paired import paired_repeats, ratio_line, spread

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4


class RandomTensors(ImageDataModule):
    """The benchmark's images as a data source of ours (held in memory, so on the device)."""

    in_memory = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
        super().__init__(batch_size=batch_size, mean=MEAN, std=STD)
        self.native_size = images.shape[-1]
        self.data = TensorDataset(images, labels)

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(10)]

    def build_splits(self) -> Splits:
        return Splits(self.data, self.data, self.data)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(L.Callback):
    """Seconds from each epoch's start to its last step's end, the device synchronized."""

    def __init__(self) -> None:
        self.durations: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
    ) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            synchronize(pl_module.device)
            self.durations.append(time.perf_counter() - self._start)


def normalizer(device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    return lambda images: (images.float() / 255 - mean) / std


def plain_loop(args: argparse.Namespace, data: TensorDataset, on_device: bool) -> float:
    """Images/s of a hand-written loop; `on_device`: the images held and indexed on the device."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_net(args.net, num_classes=10).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    forward = torch.compile(model) if args.compile else model
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    normalize = normalizer(device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.precision == "bf16-mixed"
        else contextlib.nullcontext()
    )
    images, labels = data.tensors
    if on_device:
        images, labels = images.to(device), labels.to(device)

    def batches() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        if on_device:
            order = torch.randperm(len(labels), device=device)
            for start in range(0, len(order) - args.batch + 1, args.batch):
                index = order[start : start + args.batch]
                yield images[index], labels[index]
        else:
            loader = DataLoader(
                data,
                batch_size=args.batch,
                shuffle=True,
                drop_last=True,
                pin_memory=device.type == "cuda",
            )
            for x, y in loader:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    durations = []
    model.train()
    for _ in range(args.epochs):
        synchronize(device)
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for x, y in batches():
            x = normalize(x).contiguous(memory_format=memory_format)
            with autocast:
                loss = criterion(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        synchronize(device)
        durations.append(time.perf_counter() - start)
        float(loss_sum)  # the epoch's one read, as a logging loop would
    return len(labels) // args.batch * args.batch / statistics.mean(durations[1:])


class DeviceBatches:
    """The plain device loop's batches as an iterable Lightning takes for a loader: indexed on
    the device from a permutation drawn there, the last partial batch dropped."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch: int) -> None:
        self.images, self.labels, self.batch = images, labels, batch

    def __len__(self) -> int:
        return len(self.labels) // self.batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.labels), device=self.labels.device)
        for start in range(0, len(self) * self.batch, self.batch):
            index = order[start : start + self.batch]
            yield self.images[index], self.labels[index]


class BareModule(L.LightningModule):
    """The plain loop's step, as little of a LightningModule as trains."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args
        self.net = build_net(args.net, num_classes=10)
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        self.criterion = nn.CrossEntropyLoss()
        mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        images, labels = batch
        x = ((images.float() / 255 - self.mean) / self.std).contiguous(
            memory_format=self.memory_format
        )
        return self.criterion(self.net(x), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            self.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )


def bare_lightning_loop(args: argparse.Namespace, data: TensorDataset) -> float:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = BareModule(args)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model.net = torch.compile(model.net)
    images, labels = (t.to(device) for t in data.tensors)
    timer = EpochTimer()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=args.precision,
        max_epochs=args.epochs,
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, train_dataloaders=DeviceBatches(images, labels, args.batch))
    return len(labels) // args.batch * args.batch / statistics.mean(timer.durations[1:])


def imgcls_loop(args: argparse.Namespace, data: TensorDataset) -> float:
    overrides = [
        f"model.net.name={args.net}",
        f"model.channels_last={args.channels_last}",
        f"model.compile={args.compile}",
        f"optimizer.lr={LR}",
        f"optimizer.momentum={MOMENTUM}",
        f"optimizer.weight_decay={WEIGHT_DECAY}",
        "scheduler=none",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.accelerator={'gpu' if args.device.startswith('cuda') else 'cpu'}",
        f"trainer.precision={args.precision}",
        "+trainer.limit_val_batches=0",
        "+trainer.num_sanity_val_steps=0",
        "extras.print_config=false",
        "test=false",
    ]
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config("train", [*overrides, f"paths.log_dir={out}"], output_dir=out)
        objects = build_components(cfg)
        timer = EpochTimer()
        trainer = instantiate(
            cfg.trainer, callbacks=[*objects["callbacks"], timer], logger=objects["logger"]
        )
        images, labels = data.tensors
        trainer.fit(objects["model"], datamodule=RandomTensors(images, labels, args.batch))
    return len(labels) // args.batch * args.batch / statistics.mean(timer.durations[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--net", default="cifar_quick")
    parser.add_argument("--size", type=int, default=32, help="image side, px")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=150, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the net")
    parser.add_argument(
        "--loops",
        default="host,device,lightning,imgcls",
        help="which loops to run, of host, device (the plain loops), lightning and imgcls",
    )
    args = parser.parse_args()
    torch.set_float32_matmul_precision("high")  # as train.yaml's default
    generator = torch.Generator().manual_seed(0)
    n = args.steps * args.batch
    shape = (n, 3, args.size, args.size)
    data = TensorDataset(
        torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator),
        torch.randint(0, 10, (n,), generator=generator),
    )
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"{args.net} at {args.size} px, batch {args.batch}, {args.steps} steps per epoch, "
        f"{args.precision}{', channels_last' if args.channels_last else ''}"
        f"{', compiled' if args.compile else ''}, on {args.device} ({device_name}), "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    every = {  # --loops name: (printed name, the loop)
        "host": ("plain, host data", lambda: plain_loop(args, data, on_device=False)),
        "device": ("plain, device data", lambda: plain_loop(args, data, on_device=True)),
        "lightning": ("bare Lightning", lambda: bare_lightning_loop(args, data)),
        "imgcls": ("imgcls", lambda: imgcls_loop(args, data)),
    }
    loops = {every[key][0]: every[key][1] for key in every if key in args.loops.split(",")}
    rates = paired_repeats(loops, args.repeats)
    step_us = {  # each repeat's time a step
        name: [args.batch / rate * 1e6 for rate in runs] for name, runs in rates.items()
    }
    for name, runs in rates.items():
        print(f"{name:>19}: {spread(runs)} images/s, {spread(step_us[name])} us a step")
    for ours, below in (("bare Lightning", "plain, device data"), ("imgcls", "bare Lightning")):
        if ours in step_us and below in step_us:
            extra = [a - b for a, b in zip(step_us[ours], step_us[below], strict=True)]
            print(f"{ours} - {below}: {spread(extra)} us a step")
    for ours in ("imgcls", "bare Lightning"):
        for baseline in ("plain, host data", "plain, device data"):
            if baseline in rates and ours in rates:
                label = f"{ours.replace(' ', '_')}/{baseline.replace(', ', ' ')}"
                print(ratio_line(label, rates[ours], rates[baseline]))


if __name__ == "__main__":
    main()
