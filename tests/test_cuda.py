"""What only a CUDA device shows (marker `cuda`: skipped without a GPU; `make gpu-check` runs them
on one): training and validation steps of every configuration of tests/test_device_waits.py under
`torch.cuda.set_sync_debug_mode("error")`, device decoding under deterministic mode, decoding
while the training stream has writes queued, what decode=auto picks, what DDP ranks receive
from the data-dependent init, and ReaL labels scored without a wait."""

import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from imgcls.data.augmentation.crops import DeviceCrops
from imgcls.data.augmentation.presets import resize_center_crop
from imgcls.data.decoding.device import EncodedBatch, EncodedJPEG, decode_batch, read_for_device
from imgcls.data.decoding.images import read_rgb
from imgcls.models.classifier import ImageClassifier
from imgcls.train import train
from tests.data_factory import SMOOTH, write_class_tree
from tests.device_waits import StepWindows
from tests.helpers import decoded_on_device
from tests.test_device_waits import RUNS, run_config

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda", 0)


class SyncsAreErrors(StepWindows):
    """CUDA's own check over the windows of StepWindows: any synchronizing call raises (a
    blocking copy, `.item()`, `nonzero`, a stream sync through torch)."""

    def open(self, stage: str, trainer: L.Trainer) -> None:
        torch.cuda.set_sync_debug_mode("error")

    def close(self, stage: str) -> None:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.usefixtures("fake_cifar_integrity")
@pytest.mark.parametrize("name", RUNS)
def test_no_synchronizing_call_in_steps_on_cuda(tmp_path: Path, name: str) -> None:
    overrides = RUNS[name](tmp_path)
    if name.startswith("16-mixed"):  # the real thing on a GPU
        overrides = ["trainer.precision=16-mixed"]
    cfg = run_config(
        tmp_path,
        *overrides,
        "trainer.accelerator=gpu",
        "+callbacks.sync_errors._target_=tests.test_cuda.SyncsAreErrors",
    )
    _, objects = train(cfg)
    (check,) = (c for c in objects["callbacks"] if isinstance(c, SyncsAreErrors))
    assert check.steps["train"] >= 8
    assert check.steps["val"] >= 2


def test_device_decoding_is_deterministic(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """decode=device under trainer.deterministic=true: the compiled crop kernel, never
    torchvision's reference fallback (made to fail here), and the same weights twice."""

    def fallback(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torchvision's reference roi_align was called")

    wrapper = importlib.import_module("torchvision.ops.roi_align")
    monkeypatch.setattr(wrapper, "_roi_align", fallback)
    root = write_class_tree(tmp_path / "photos", ["cat", "dog", "fox"], per_class=12)
    weights = []
    for run in ("a", "b"):
        cfg = make_cfg(
            *decoded_on_device(root),
            "trainer.max_epochs=2",
            "trainer.deterministic=true",
            "trainer.accelerator=gpu",
            "test=false",
            run_dir=tmp_path / run,
        )
        metrics, objects = train(cfg)
        assert math.isfinite(metrics["train/loss"])
        weights.append({k: v.cpu() for k, v in objects["model"].state_dict().items()})
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


def plain_photos(folder: Path) -> list[Path]:
    """Baseline RGB JPEGs of a smooth picture at a few sizes: what goes to nvjpeg."""
    folder.mkdir(parents=True)
    paths = []
    for i, size in enumerate([(400, 300), (320, 240), (200, 150), (160, 160)] * 3):
        paths.append(folder / f"{i:02d}.jpg")
        Image.fromarray(SMOOTH).resize(size).save(paths[-1], quality=90)
    return paths


def corrupted(decode: Callable[[], list[torch.Tensor]], references: list[torch.Tensor]) -> int:
    """Images that come out wrong when, as they are decoded, the training stream still has
    writes queued into blocks just freed, of the decoded images' sizes (torchvision PR 9606:
    they land there, and are overwritten)."""
    wrong = 0
    for _ in range(10):
        torch.cuda._sleep(100_000_000)  # ~50 ms of work queued on the training stream
        decoys = [torch.empty(r.numel(), dtype=torch.uint8, device=CUDA) for r in references]
        for decoy in decoys:
            decoy.fill_(7)  # queued behind the sleep
        del decoys  # their blocks are free for this stream's next allocations at once
        for image, reference in zip(decode(), references, strict=True):
            wrong += bool((image.cpu().float() - reference.float()).abs().mean() > 2)
    return wrong


def test_decoded_images_never_land_in_memory_the_training_stream_still_writes(tmp_path) -> None:
    paths = plain_photos(tmp_path / "photos")
    items = [read_for_device(p) for p in paths]
    assert all(isinstance(i, EncodedJPEG) for i in items)
    batch = EncodedBatch([EncodedJPEG(i.data.pin_memory(), i.path) for i in items])
    references = [read_rgb(p) for p in paths]  # the worker path

    assert corrupted(lambda: decode_batch(batch, CUDA)[0], references) == 0
    images, _ = decode_batch(batch, CUDA)
    crops = DeviceCrops(train_crop=32, eval_resize=36, eval_crop=32).eval(images)
    workers = torch.stack([resize_center_crop(36, 32)(r).float() for r in references])
    assert (crops.cpu() - workers).abs().mean() < 1.0  # of 255: within a level on average

    def unordered() -> list[torch.Tensor]:  # torchvision's call on the training stream
        return decode_jpeg([i.data for i in batch.items], mode=ImageReadMode.RGB, device=CUDA)

    if corrupted(unordered, references) == 0:
        pytest.skip("torchvision's own call did not show the race on this GPU either")


def test_data_init_broadcasts_host_tensors() -> None:
    """A pickled CUDA tensor is unpickled on the device it left: rank 1 would touch GPU 0."""
    net = {"name": "fast_cifar", "data_init_images": 64}
    model = ImageClassifier(net, num_classes=10, optimizer={"_target_": "torch.optim.SGD"})
    model = model.to(CUDA)
    sent = []

    class Strategy:
        def broadcast(self, obj: Any) -> Any:
            sent.append(obj)
            return obj

    class Trainer:  # what the hook reads of a 2-process trainer
        ckpt_path, world_size, strategy = None, 2, Strategy()

        class datamodule:  # noqa: N801
            @staticmethod
            def first_train_images(count: int, device: torch.device) -> torch.Tensor:
                return torch.randn(count, 3, 32, 32, device=device)

    model.trainer = Trainer()
    model.on_fit_start()
    (state,) = sent
    assert all(t.device.type == "cpu" for t in state.values())
    assert all(p.device == CUDA for p in model.parameters())


def test_real_labels_score_test_batches_on_the_gpu_without_a_wait() -> None:
    """callbacks/real_labels.py: each batch's label sets taken from the table on the GPU by
    position and scored, with every synchronizing call an error; the score is the right one."""
    from types import SimpleNamespace

    from imgcls.callbacks.real_labels import RealLabelsScore

    rows = torch.zeros(6, 4, dtype=torch.bool)
    rows[0, 1] = rows[2, 2] = rows[4, 3] = True  # images 1, 3 and 5: no class fits
    logits = torch.eye(4)[[1, 2, 2, 0, 0, 0]].to(CUDA)  # 0 and 2 right, 4 wrong
    logged: dict[str, float] = {}
    score = RealLabelsScore(rows)
    trainer = SimpleNamespace(
        world_size=1, global_rank=0, test_dataloaders=SimpleNamespace(batch_size=3)
    )
    module = SimpleNamespace(device=CUDA, log=lambda name, value: logged.update({name: value}))
    score.on_test_epoch_start(trainer, module)
    torch.cuda.set_sync_debug_mode("error")
    try:
        score.on_test_batch_end(trainer, module, {"logits": logits[:3]}, None, 0)
        score.on_test_batch_end(trainer, module, {"logits": logits[3:]}, None, 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    score.on_test_epoch_end(trainer, module)
    assert float(logged["test/real_acc"]) == pytest.approx(2 / 3)
    assert float(logged["test/real_acc_top5"]) == 1.0
