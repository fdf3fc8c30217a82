"""data=shards: a photo folder written as LitData shards by imgcls-prepare, trained on from a
folder and from an S3-compatible server started here on 127.0.0.1, and resumed mid-epoch
exactly where the checkpoint was taken (on two nodes: tests/test_multinode.py)."""

import csv
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from imgcls.prepare import SKIPPED_FILE
from imgcls.prepare import main as prepare_main
from imgcls.run.compose import compose_config, instantiate
from imgcls.train import train
from imgcls.utils.errors import UserError
from tests.data_factory import BAD, photo_tree, write_label_csv
from tests.helpers import CLI_QUIET, run_cli

# 64 train images (one of the 65 is no image) in batches of 16: 4 steps an epoch, 2 epochs
RUN = [
    "data=shards",
    "data.train_crop=32",
    "data.eval_resize=36",
    "data.eval_crop=32",
    "data.batch_size=16",
    "data.num_workers=1",
    "data.augment.preset=standard",
    "model=cifar_quick",
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    *CLI_QUIET,
]


def prepare(*argv: str) -> None:
    saved = sys.argv
    sys.argv = ["imgcls-prepare", *argv]
    try:
        prepare_main()
    finally:
        sys.argv = saved


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("shards")
    photos = photo_tree(tmp / "photos")
    prepare(str(photos), str(tmp / "shards"), "--format", "shards", "--workers", "1")
    return tmp / "shards"


def run_cfg(root: str, log_dir: Path, *extra: str):
    return compose_config(
        "train", [*RUN, f"data.root={root}", f"paths.log_dir={log_dir}", *extra],
        output_dir=log_dir / "run",
    )  # fmt: skip


def test_prepare_writes_every_split_lists_bad_files_and_keeps_finished_splits(
    shards: Path, capsys: pytest.CaptureFixture
) -> None:
    meta = json.loads((shards / "meta.json").read_text())
    assert meta["classes"] == ["blue", "green", "red"]  # the empty class folder left out
    assert meta["multilabel"] is False
    with open(shards / "split.csv") as f:
        split = list(csv.DictReader(f))  # carved as a folder run carves
    skipped = {line.split("\t")[0] for line in (shards / SKIPPED_FILE).read_text().splitlines()}
    assert sorted(Path(path).name for path in skipped) == sorted(BAD)  # one line each
    for name in ("train", "val", "test"):
        kept = [row for row in split if row["split"] == name and row["path"] not in skipped]
        assert meta["sizes"][name] == sum(meta["class_counts"][name]) == len(kept)
        assert (shards / name / "index.json").is_file()
    written = {p: p.stat().st_mtime_ns for p in shards.rglob("*.bin")}
    prepare(str(shards.parent / "photos"), str(shards), "--format", "shards", "--workers", "1")
    assert {p: p.stat().st_mtime_ns for p in shards.rglob("*.bin")} == written  # kept
    assert "data=shards data.root=" in capsys.readouterr().out


class RecordBatches(Callback):
    """Appends each training step's number and the sum of its batch's pixels to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {batch[0].double().sum().item():.3f}\n")


def steps_seen(path: Path) -> dict[int, str]:
    return dict(line.split() for line in path.read_text().splitlines())


@pytest.mark.slow(seconds=25)
def test_a_run_killed_mid_epoch_resumes_at_the_same_image(shards: Path, tmp_path: Path) -> None:
    """Killed in epoch 2 and resumed from the step checkpoint, each later step gets the batch
    the uninterrupted run got: the loader's place in the shards came back with the
    checkpoint, not the epoch's start."""
    # no random crops: the loader workers' random streams are not kept in a checkpoint
    args = [*RUN, f"data.root={shards}", "test=false", "data.augment.preset=none"]
    record = "+callbacks.record._target_=tests.data.sources.test_shards.RecordBatches"
    whole = [*args, record, f"+callbacks.record.path={tmp_path}/whole.txt"]
    train(compose_config("train", [*whole, f"paths.log_dir={tmp_path}/whole"], tmp_path / "w"))
    again = [*args, record, f"+callbacks.record.path={tmp_path}/killed.txt"]
    again.append(f"paths.log_dir={tmp_path}/killed")
    fault = ["+callbacks.fault._target_=tests.faults.KillAtStep", "+callbacks.fault.step=6"]
    killed = run_cli("train.py", [*again, *fault])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (run_dir,) = (tmp_path / "killed" / "train" / "runs").iterdir()
    at_kill = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert at_kill["global_step"] == 6  # mid-epoch 2
    resume = compose_config("train", [*again, "ckpt_path=last"], output_dir=tmp_path / "again")
    train(resume)
    seen, killed_seen = steps_seen(tmp_path / "whole.txt"), steps_seen(tmp_path / "killed.txt")
    assert sorted(seen) == sorted(killed_seen) == [str(step) for step in range(8)]
    assert killed_seen == seen  # steps 6 and 7 after the resume included
    assert len(set(seen.values())) == 8  # each batch its own images


def test_shards_refuse_what_they_cannot_serve(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data\.sampler=balanced"):
        train(run_cfg(str(shards), tmp_path, "data.sampler=balanced"))
    with pytest.raises(UserError, match="hold one label per image"):
        train(run_cfg(str(shards), tmp_path, "model.task=multilabel"))
    with pytest.raises(UserError, match="holds no shards"):
        train(run_cfg(str(tmp_path), tmp_path))


@pytest.fixture
def s3_server() -> Iterator[str]:
    """An S3-compatible server (moto's) on 127.0.0.1, stopped after the test."""
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.slow(seconds=15)
def test_training_streams_shards_from_an_object_store(
    shards: Path, tmp_path: Path, s3_server: str
) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="photos")
    for path in shards.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "photos", f"v1/{path.relative_to(shards)}")
    cache = tmp_path / "cache"
    cfg = run_cfg(
        "s3://photos/v1", tmp_path / "logs",
        f"+data.storage_options.endpoint_url={s3_server}",
        "+data.storage_options.region_name=us-east-1",
        f"data.cache_dir={cache}",
        "trainer.max_epochs=1",
    )  # fmt: skip
    metrics, _ = train(cfg)
    assert metrics["test/acc"] > 0.5  # three colours: learnt from the streamed photos
    assert list(cache.rglob("chunk-*.bin"))  # streamed, cached here


def test_several_labels_per_image_come_back_as_multi_hot_rows(tmp_path: Path) -> None:
    listing = write_label_csv(tmp_path / "photos", per_class=6)
    prepare(str(listing), str(tmp_path / "shards"), "--format", "shards", "--multilabel")
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    assert meta["multilabel"] is True
    assert meta["classes"] == ["cat", "dog", "person"]
    dm = instantiate(run_cfg(str(tmp_path / "shards"), tmp_path).data, multilabel=True)
    dm.setup()
    val = dm.splits.val
    rows = torch.stack([val[i][1] for i in range(meta["sizes"]["val"])])
    assert rows.shape == (meta["sizes"]["val"], 3)
    assert rows.sum(dim=0).tolist() == meta["class_counts"]["val"]  # positives per class
    assert rows.sum(dim=1).max() == 2  # "cat;person" kept both
    single = instantiate(run_cfg(str(tmp_path / "shards"), tmp_path).data)
    with pytest.raises(UserError, match="several labels per image: add model"):
        single.setup()


def test_decoded_on_the_device_from_the_shards_bytes(shards: Path, tmp_path: Path) -> None:
    cfg = run_cfg(str(shards), tmp_path, "data.decode=device")
    metrics, objects = train(cfg)
    assert objects["datamodule"].decodes_on_device()
    assert metrics["test/acc"] > 0.5  # three colours, from JPEG bytes decoded in batches
