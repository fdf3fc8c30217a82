"""callbacks/throughput.py: images per second and the share of the epoch the training loop
waited for data, from host clocks and batch shapes only; a warning when data-bound."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from imgcls.callbacks import throughput
from imgcls.callbacks.throughput import Throughput
from imgcls.train import train
from tests.callbacks.tiny import TinyClassifier, loader, tiny_trainer


class Clock:
    """A host clock the test moves by hand (no wall-clock dependence)."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


class Lines:
    """The callback's log lines, by level."""

    def __init__(self) -> None:
        self.infos: list[str] = []
        self.warnings: list[str] = []

    def info(self, line: str) -> None:
        self.infos.append(line)

    def warning(self, line: str) -> None:
        self.warnings.append(line)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(throughput, "time", clock)
    return clock


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> Lines:
    lines = Lines()
    monkeypatch.setattr(throughput, "log", lines)
    return lines


def run_epoch(
    clock: Clock, callback: Throughput, waits_and_steps, tail: float, resumed: bool = False
) -> dict:
    """One epoch through the callback's hooks: before each batch of 8 images the loop waits,
    then steps (seconds each); `tail` seconds end the epoch. `resumed`: the fit starts midway
    through it, as Lightning resumes a mid-epoch checkpoint (on_train_start, no
    on_train_epoch_start). What it logged."""
    logged: dict[str, float] = {}
    module = SimpleNamespace(log_dict=lambda metrics, **kwargs: logged.update(metrics))
    trainer = SimpleNamespace(world_size=2, current_epoch=3)
    if resumed:
        callback.on_train_start(trainer, module)
    else:
        callback.on_train_epoch_start(trainer, module)
    batch = (torch.zeros(8, 3, 4, 4, dtype=torch.uint8), torch.zeros(8, dtype=torch.long))
    for wait, step in waits_and_steps:
        clock.now += wait
        callback.on_train_batch_start(trainer, module, batch, 0)
        clock.now += step
        callback.on_train_batch_end(trainer, module, None, batch, 0)
    clock.now += tail
    callback.on_train_epoch_end(trainer, module)
    return logged


def test_rate_and_wait_share_of_an_epoch(clock: Clock, lines: Lines) -> None:
    logged = run_epoch(clock, Throughput(data_bound_warning=0.3), [(1, 3), (1, 3)], tail=2)
    # 2 batches of 8 images on each of 2 processes in 10 s; 2 s of them waiting for data
    assert logged == {
        "perf/images_per_sec": pytest.approx(3.2),
        "perf/data_wait_share": pytest.approx(0.2),
    }
    assert lines.infos == ["epoch 3: 3 images/s, waited for data 20% of the time"]
    assert not lines.warnings


def test_an_epoch_resumed_midway_is_timed_from_the_resume(clock: Clock, lines: Lines) -> None:
    """Its clocks counted from the process's start, the resumed epoch read as data-bound."""
    clock.now += 1000  # the process started long before the fit
    logged = run_epoch(clock, Throughput(), [(1, 3), (1, 3)], tail=2, resumed=True)
    assert logged == {
        "perf/images_per_sec": pytest.approx(3.2),
        "perf/data_wait_share": pytest.approx(0.2),
    }
    assert not lines.warnings


def test_a_data_bound_epoch_is_said_with_what_to_do(clock: Clock, lines: Lines) -> None:
    logged = run_epoch(clock, Throughput(data_bound_warning=0.3), [(4, 1), (4, 1)], tail=0)
    assert logged["perf/data_wait_share"] == pytest.approx(0.8)
    (warning,) = lines.warnings
    assert warning.startswith("Data-bound: the training loop waited for data 80% of epoch 3.")
    assert "data.num_workers" in warning


def test_an_epoch_without_batches_logs_nothing(clock: Clock, lines: Lines) -> None:
    assert run_epoch(clock, Throughput(), [], tail=5) == {}
    assert not lines.infos


def test_throughput_is_logged_per_epoch(make_cfg) -> None:
    cfg = make_cfg("model=cifar_quick", "trainer.max_epochs=1", "+trainer.limit_train_batches=4")
    metrics, _ = train(cfg)
    assert metrics["perf/images_per_sec"] > 0
    assert 0 <= metrics["perf/data_wait_share"] <= 1


class Timed(TinyClassifier):
    """Each training step takes 1 s of the test's clock, each validation batch 10 s; the
    training data takes none."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def training_step(self, batch, batch_idx):
        self.clock.now += 1.0
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.clock.now += 10.0
        return super().validation_step(batch, batch_idx)


class SlowStream(IterableDataset):
    """`images` of `loader`'s as a stream with no length, each taking 5 s of the test's clock to
    load (Lightning fetches a batch ahead from a loader without a length or a limit:
    validation's first before on_validation_start)."""

    def __init__(self, clock: Clock, images: int) -> None:
        self.clock, self.data = clock, loader(images).dataset

    def __iter__(self):
        for index in range(len(self.data)):
            self.clock.now += 5.0
            yield self.data[index]


def test_validation_is_neither_waiting_for_data_nor_training_time(
    clock: Clock, lines: Lines
) -> None:
    """Validation after batches 2 and 4: its steps and its data, its first batch included, are
    neither waiting for data mid-epoch (a false 'Data-bound' warning) nor, at the epoch's end,
    time that divides the images."""
    trainer = tiny_trainer(
        callbacks=[Throughput(data_bound_warning=0.3)],
        limit_train_batches=4,
        val_check_interval=2,
    )
    trainer.fit(Timed(clock), loader(), DataLoader(SlowStream(clock, 4), batch_size=2))
    metrics = trainer.callback_metrics
    assert not lines.warnings
    assert metrics["perf/data_wait_share"].item() == 0.0
    assert metrics["perf/images_per_sec"].item() == pytest.approx(8 / 4)  # 4 batches of 2, 4 s
