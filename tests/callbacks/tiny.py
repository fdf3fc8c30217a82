"""Small real pieces for driving one callback in a real Trainer in about a second: a tiny
classifier on random 8 x 8 images, its loader, a quiet CPU Trainer and a logger that records
what it is given."""

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from imgcls.models.divergence import DivergenceGuard


class TinyClassifier(L.LightningModule):
    """Conv -> BatchNorm -> pool -> Linear head (`head`) over 3 classes, trained with SGD.

    `val_scores[e]` is logged as val/acc at the end of validation epoch e (for a checkpoint's
    monitor); `schedule` (a function of the scheduler's step count) makes a LambdaLR stepped
    per `interval`; from optimizer step `nan_from_step` on (counted from 1) the loss is NaN. The
    loss of each training batch is kept in `losses`: (the optimizer step it counts towards, the
    loss)."""

    def __init__(
        self,
        lr: float = 0.1,
        val_scores: list[float] | None = None,
        schedule: Any = None,
        interval: str = "step",
        nan_from_step: int | None = None,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        )
        self.lr, self.schedule, self.interval = lr, schedule, interval
        self.val_scores = list(val_scores or [])
        self.nan_from_step = nan_from_step
        self.losses: list[tuple[int, Tensor]] = []
        self.divergence = DivergenceGuard()

    @property
    def head(self) -> nn.Module:
        return self.net[-1]

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        step = self.global_step + 1
        loss = F.cross_entropy(self(batch[0]), batch[1])
        if self.nan_from_step is not None and step >= self.nan_from_step:
            loss = loss * float("nan")
        self.divergence.note(loss, step)
        self.losses.append((step, loss.detach()))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return {"logits": self(batch[0])}

    def on_validation_epoch_end(self) -> None:
        if self.val_scores and not self.trainer.sanity_checking:
            self.log("val/acc", self.val_scores[self.current_epoch])

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        if self.schedule is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.interval},
        }


def loader(images: int = 8, batch_size: int = 2, seed: int = 0) -> DataLoader:
    """`images` random 3 x 8 x 8 images, labels 0, 1, 2, 0, ..., in a fixed order."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(images, 3, 8, 8, generator=generator)
    return DataLoader(TensorDataset(data, torch.arange(images) % 3), batch_size=batch_size)


def tiny_trainer(**kwargs: Any) -> L.Trainer:
    """A quiet CPU Trainer: one epoch of 2 batches, no logger, no checkpoints, no sanity check
    (each overridable)."""
    settings = {
        "max_epochs": 1,
        "limit_train_batches": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "accelerator": "cpu",
        "devices": 1,
    }
    return L.Trainer(**(settings | kwargs))


class RecordingLogger(Logger):
    """A logger that keeps every `log_metrics` call as (step, metrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((step, dict(metrics)))

    def points(self, tag: str) -> list[tuple[int | None, float]]:
        """(step, value) of every call that logged `tag`, in order."""
        return [(step, metrics[tag]) for step, metrics in self.logged if tag in metrics]
