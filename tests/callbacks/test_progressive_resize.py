"""callbacks/progressive_resize.py: min_res until start_epoch, a linear ramp to max_res at
end_epoch in steps of `step` px; each epoch's training batches scaled to it on the device,
evaluation batches left at full size."""

from types import SimpleNamespace

import torch

from imgcls.callbacks.progressive_resize import ProgressiveResize, resolution_at
from imgcls.data.sources.digits import DigitsDataModule
from tests.helpers import fake_trainer


def test_progressive_resize_schedule_and_device_scaling(make_cfg) -> None:
    assert [resolution_at(e, 160, 192, 2, 13, 32) for e in (0, 2, 7, 12, 13, 15)] == [
        160,
        160,
        160,
        160,
        192,
        192,
    ]
    assert resolution_at(5, 128, 256, 0, 8, 32) == 192
    dm = DigitsDataModule(batch_size=4)

    dm.trainer = fake_trainer()
    dm.device_batch.set_train_resolution(24)
    images, _ = dm.on_after_batch_transfer((torch.zeros(4, 3, 32, 32, dtype=torch.uint8), None), 0)
    assert images.shape == (4, 3, 24, 24)


def test_each_epoch_trains_at_its_resolution_and_evaluates_at_full_size() -> None:
    callback = ProgressiveResize(min_res=16, max_res=32, start_epoch=1, end_epoch=3, step=8)
    datamodule = DigitsDataModule(batch_size=4)
    batch = (torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    trained, evaluated = [], []
    for epoch in range(5):
        trainer = SimpleNamespace(current_epoch=epoch, datamodule=datamodule)
        callback.on_train_epoch_start(trainer, None)
        datamodule.trainer = fake_trainer(training=True)
        trained.append(datamodule.on_after_batch_transfer(batch, 0)[0].shape[-2:])
        datamodule.trainer = fake_trainer(training=False)
        evaluated.append(datamodule.on_after_batch_transfer(batch, 0)[0].shape[-2:])
    # 16 up to start_epoch, 16 + 16 * (2 - 1) / 2 = 24 halfway, 32 from end_epoch on
    assert [tuple(size) for size in trained] == [(16, 16), (16, 16), (24, 24), (32, 32), (32, 32)]
    assert {tuple(size) for size in evaluated} == {(32, 32)}


def test_the_ramp_rounds_down_to_the_step() -> None:
    # 160 + 32 * 3 / 13 = 167.4 and 160 + 32 * 4 / 13 = 169.8
    assert resolution_at(3, 160, 192, 0, 13, 32) == 160
    assert resolution_at(3, 160, 192, 0, 13, 8) == 160
    assert resolution_at(4, 160, 192, 0, 13, 8) == 168
    assert all(resolution_at(e, 128, 224, 0, 10, 16) % 16 == 0 for e in range(12))
