"""No host reads in a training step: on a GPU each one (`.item()`, a tensor in an `if`, `.cpu()`)
drains the device's queue, so the host's per-step work stops overlapping the device's.

The counter patches every Python-side way of reading a tensor's value and counts the calls made
during whole training iterations (loading, transfer, augmentation, step, every callback), from
the end of step 2 to the end of step 12: that spans a step that writes step-level curves
(log_every_n_steps=10). It runs on a CPU, where the same code paths run as on a GPU.
"""

import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from imgcls.train import train
from imgcls.utils.compose import compose_config

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
# torchvision's MixUp / CutMix draw their per-batch mixing weight and box from host-side RNG
# (CPU tensors, whatever device the batch is on): reading those waits for nothing.
HOST_RNG = "torchvision/transforms/v2/_augment.py"


class HostReadCounter(L.Callback):
    """Counts host reads of tensors between the end of step `first` and the end of step `last`."""

    def __init__(self, first: int = 2, last: int = 12) -> None:
        self.first, self.last = first, last
        self.reads: Counter[str] = Counter()
        self.where: list[str] = []
        self._saved: dict[str, Any] = {}

    def _patch(self) -> None:
        for name in READS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def counted(tensor: torch.Tensor, *args: Any, _name=name, _orig=original) -> Any:
                stack = "".join(traceback.format_stack(limit=6)[:-1])
                if HOST_RNG not in stack:
                    self.reads[_name] += 1
                    self.where.append(stack)
                return _orig(tensor, *args)

            setattr(torch.Tensor, name, counted)

    def _unpatch(self) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.first:
            self._patch()
        elif trainer.global_step == self.last:
            self._unpatch()

    def teardown(self, *args: Any, **kwargs: Any) -> None:
        self._unpatch()


RUNS = {
    "default": [],
    "in-memory CIFAR-style augmentation, bf16, mixup": [
        "data.augment=cifar",
        "data.mixup_alpha=0.2",
        "trainer.precision=bf16-mixed",
        "model.channels_last=true",
    ],
    "fast_cifar recipe with EMA": [
        "model.net.name=fast_cifar",
        "data.augment=cifar_light",
        "scheduler=onecycle",
        "callbacks=with_ema",
        "optimizer.imgcls.lr_mult.norm=64",
        "optimizer.imgcls.no_decay_norm_and_bias=true",
    ],
}


@pytest.mark.parametrize("extra", RUNS.values(), ids=RUNS.keys())
def test_no_host_reads_in_training_steps(tmp_path: Path, extra: list[str]) -> None:
    """The default callbacks and loggers, the progress bar included, as a user runs them."""
    cfg = compose_config(
        "train",
        [
            f"paths.log_dir={tmp_path / 'logs'}",
            "extras.print_config=false",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "test=false",
            "+callbacks.host_reads._target_=tests.test_host_sync.HostReadCounter",
            *extra,
        ],
        output_dir=tmp_path / "run",
    )
    _, objects = train(cfg)
    (counter,) = (c for c in objects["callbacks"] if isinstance(c, HostReadCounter))
    assert objects["trainer"].global_step > counter.last  # the window was reached
    assert not counter.reads, f"{dict(counter.reads)} host reads, first at:\n{counter.where[0]}"
