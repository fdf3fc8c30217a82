"""What only a CUDA device shows (marker `cuda`: skipped without a GPU; `make gpu-check` runs them
on one): training and validation steps of every configuration of tests/test_device_waits.py under
`torch.cuda.set_sync_debug_mode("error")`, device decoding under deterministic mode, decoding
while the training stream is busy, and what DDP ranks receive from the data-dependent init."""

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from imgcls.callbacks.data_init import DataDependentInit
from imgcls.data.decode import read_rgb
from imgcls.data.device_decode import (
    DeviceCrops,
    EncodedBatch,
    EncodedJPEG,
    choose_decode,
    decode_batch,
    hardware_jpeg_decoder,
    read_for_device,
)
from imgcls.data.transforms import resize_center_crop
from imgcls.train import train
from tests.data_factory import write_class_tree
from tests.device_waits import StepWindows
from tests.test_device_waits import RUNS, photo_folder, run_config

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


def test_device_decoding_is_deterministic(make_cfg, tmp_path: Path) -> None:
    """decode=device under trainer.deterministic=true: the compiled crop kernel (not
    torchvision's reference fallback), and the same weights twice."""
    root = write_class_tree(tmp_path / "photos", ["cat", "dog", "fox"], per_class=12)
    weights = []
    for run in ("a", "b"):
        cfg = make_cfg(
            "data=folder",
            f"data.root={root}",
            "data.decode=device",
            "data.train_crop=32",
            "data.eval_resize=36",
            "data.eval_crop=32",
            "data.batch_size=8",
            "data.num_workers=1",
            "model=cifar_quick",
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


def test_decoded_batches_match_the_workers_while_the_training_stream_is_busy(tmp_path) -> None:
    """Queue long work on the training stream that ends by writing blocks it then frees, and
    decode meanwhile: decoded images must not land in those blocks (torchvision PR 9606)."""
    found = sorted(photo_folder(tmp_path / "photos").rglob("*.jpg"))
    photos = [p for p in found if "truncated" not in p.name][:16]
    items = [read_for_device(p) for p in photos]
    encoded = [i for i in items if isinstance(i, EncodedJPEG)]
    assert len(encoded) >= 8
    batch = EncodedBatch([EncodedJPEG(i.data.pin_memory(), i.path) for i in encoded])
    reference = [read_rgb(i.path) for i in encoded]  # the worker path
    for _ in range(5):
        big = torch.randn(4096, 4096, device=CUDA)
        for _ in range(20):  # ~tens of ms of queued work
            big = big @ big / 64
        decoys = [torch.empty(r.numel(), dtype=torch.uint8, device=CUDA) for r in reference]
        for decoy in decoys:
            decoy.copy_(big.view(-1)[: decoy.numel()].to(torch.uint8))  # written after the queue
        del decoys  # their blocks are free for reuse on this stream at once
        images, kept = decode_batch(batch, CUDA)
        assert kept == list(range(len(encoded)))
        for image, ref in zip(images, reference, strict=True):
            difference = (image.cpu().float() - ref.float()).abs().mean()
            assert difference < 1.0  # nvjpeg against libjpeg: within a level on average
    crops = DeviceCrops(train_crop=32, eval_resize=36, eval_crop=32).eval(images)
    workers = torch.stack([resize_center_crop(36, 32)(r).float() for r in reference])
    assert (crops.cpu() - workers).abs().mean() < 2.0


def test_decode_auto_asks_nvjpeg_about_the_hardware_decoder() -> None:
    hardware = hardware_jpeg_decoder(CUDA)
    assert hardware is not None  # nvjpeg was found and answered
    name = torch.cuda.get_device_name(CUDA)
    if any(gpu in name for gpu in ("A100", "H100", "H200")):
        assert hardware
    assert choose_decode("auto", CUDA) == ("device" if hardware else "cpu")


def test_data_init_broadcasts_host_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pickled CUDA tensor is unpickled on the device it left: rank 1 would touch GPU 0."""
    from imgcls.models.nets.fast_cifar import FastCifar

    net = FastCifar(num_classes=10).to(CUDA)
    sent = []

    class Strategy:
        def broadcast(self, obj: Any) -> Any:
            sent.append(obj)
            return obj

    class Trainer:
        ckpt_path, world_size, strategy = None, 2, Strategy()

        class datamodule:  # noqa: N801
            @staticmethod
            def first_train_images(count: int, device: torch.device) -> torch.Tensor:
                return torch.randn(count, 3, 32, 32, device=device)

    class Module:
        hparams: dict = {"net": {}}
        device = CUDA

    Module.net = net
    DataDependentInit(num_images=64).on_fit_start(Trainer(), Module())
    (state,) = sent
    assert all(t.device.type == "cpu" for t in state.values())
    assert all(p.device == CUDA for p in net.parameters())
