"""data=shards: a photo folder written as LitData shards by imgcls-prepare, trained on from a
folder and from an S3-compatible server started here on 127.0.0.1, and resumed mid-epoch
exactly where the checkpoint was taken (on two nodes: tests/test_multinode.py); evaluation
shares, persistent workers, the chunk cache and damaged chunks."""

import csv
import inspect
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from imgcls.data.sources.folder import FolderDataModule
from imgcls.data.sources.shards import ShardsDataModule, write_shards
from imgcls.prepare import SKIPPED_FILE
from imgcls.prepare import main as prepare_main
from imgcls.run.compose import compose_config, instantiate
from imgcls.run.record import run_recorded
from imgcls.train import main as train_main
from imgcls.train import train
from imgcls.utils.errors import UserError
from tests.data_factory import BAD, hf_split, photo_tree, write_class_tree, write_label_csv
from tests.helpers import CLI_QUIET, fake_trainer, run_cli

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


@pytest.mark.slow(seconds=14)
def test_a_run_killed_during_a_mid_epoch_save_resumes_from_the_last_at_the_same_image(
    shards: Path, tmp_path: Path
) -> None:
    """SIGKILLed halfway through writing step 7's checkpoint, in epoch 2: step 6's is intact and
    loadable, and the run resumes from it in its own dir to its planned end, each later step
    getting the batch the uninterrupted run got: the loader's place in the shards came back with
    the checkpoint, not the epoch's start. (A plain loader resumed mid-epoch, after a signal:
    tests/test_faults.py.)"""
    # no random crops: the loader workers' random streams are not kept in a checkpoint
    args = [*RUN, f"data.root={shards}", "test=false", "data.augment.preset=none"]
    record = "+callbacks.record._target_=tests.data.sources.test_shards.RecordBatches"
    whole = [*args, record, f"+callbacks.record.path={tmp_path}/whole.txt"]
    train(compose_config("train", [*whole, f"paths.log_dir={tmp_path}/whole"], tmp_path / "w"))
    again = [*args, record, f"+callbacks.record.path={tmp_path}/killed.txt"]
    again.append(f"paths.log_dir={tmp_path}/killed")
    fault = ["+callbacks.fault._target_=tests.faults.KillDuringSave", "+callbacks.fault.step=7"]
    killed = run_cli("train.py", [*again, *fault])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (run_dir,) = (tmp_path / "killed" / "train" / "runs").iterdir()
    at_kill = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert at_kill["global_step"] == 6  # mid-epoch 2
    resume = compose_config("train", [*again, "ckpt_path=last"], output_dir=tmp_path / "again")
    run_recorded(resume, lambda: train(resume))
    assert [p.name for p in (tmp_path / "killed" / "train" / "runs").iterdir()] == [run_dir.name]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    final = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert (final["global_step"], final["epoch"]) == (8, 1)
    assert all(torch.isfinite(v).all() for v in final["state_dict"].values())
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


def test_a_hugging_face_datasets_rows_are_written_as_shards_byte_for_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A saved dataset (found as one) written with --as-is: each row's image bytes, label and
    key in its split's shards, its own val split kept, test carved, an unreadable row and an
    unlabelled one listed; parquet files found as a dataset too."""
    from datasets import DatasetDict
    from datasets import Image as ImageFeature
    from litdata import StreamingDataset

    train_rows = hf_split(tmp_path / "photos", per_class=8, extra=[(b"junk", 1), (None, -1)])
    DatasetDict(train=train_rows, validation=hf_split(tmp_path / "val", per_class=3)).save_to_disk(
        tmp_path / "hf"
    )
    dst = tmp_path / "shards"
    prepare(str(tmp_path / "hf"), str(dst), "--format", "shards", "--as-is", "--workers", "1")
    meta = json.loads((dst / "meta.json").read_text())
    assert meta["classes"] == ["a", "b"]  # the ClassLabel's names
    assert meta["sizes"]["val"] == 6  # the dataset's own val split, whole
    assert meta["sizes"]["train"] + meta["sizes"]["test"] == 16  # test carved; 2 rows out
    assert (dst / SKIPPED_FILE).read_text().startswith("train[16]\t")
    assert (dst / "bad_rows.txt").read_text() == "train[17]: no label\n"
    said = capsys.readouterr().out.replace("\n", "")
    assert "Unreadable images were skipped" in said
    assert "Rows without a usable label were left out" in said
    rows = {
        "train": train_rows.cast_column("image", ImageFeature(decode=False)),
        "validation": DatasetDict.load_from_disk(tmp_path / "hf")["validation"].cast_column(
            "image", ImageFeature(decode=False)
        ),
    }
    keys = set()
    for split in ("train", "val", "test"):
        for item in StreamingDataset(str(dst / split)):
            key = bytes(item["path"]).decode()
            name, index = key[:-1].split("[")
            row = rows[name][int(index)]
            assert bytes(item["image"]) == row["image"]["bytes"], key
            assert int(item["label"]) == row["label"], key
            keys.add(key)
    assert len(keys) == 22
    (tmp_path / "parquet").mkdir()
    train_rows.to_parquet(tmp_path / "parquet" / "train.parquet")
    cache = tmp_path / "hf_cache"  # load_dataset's Arrow copy: here, not in the home cache
    out = tmp_path / "from_parquet"
    prepare(str(tmp_path / "parquet"), str(out), "--format", "shards", "--cache-dir", str(cache))
    assert json.loads((out / "meta.json").read_text())["classes"] == ["a", "b"]
    assert list(cache.rglob("*.arrow"))
    with pytest.raises(SystemExit, match="Hugging Face dataset: write it as shards"):
        prepare(str(tmp_path / "hf"), str(tmp_path / "copy"))
    with pytest.raises(SystemExit, match="--cache-dir are for a Hugging Face dataset"):
        prepare(
            str(tmp_path / "photos"), str(tmp_path / "x"), "--format", "shards", "--label-key", "y"
        )
    with pytest.raises(SystemExit, match=r"does not exist \(a Hub id takes --source hf\)"):
        prepare("user/photos", str(tmp_path / "x"), "--format", "shards")


def test_a_relative_source_is_stored_by_paths_from_its_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from litdata import StreamingDataset

    write_class_tree(tmp_path / "photos", ("a", "b"), 4)
    monkeypatch.chdir(tmp_path)
    prepare("photos", "shards", "--format", "shards", "--as-is", "--workers", "1")
    stored = {bytes(item["path"]).decode() for item in StreamingDataset("shards/train")}
    assert {path.split("/")[0] for path in stored} == {"a", "b"}  # not photos/a/...


def test_decoded_on_the_device_from_the_shards_bytes(shards: Path, tmp_path: Path) -> None:
    cfg = run_cfg(str(shards), tmp_path, "data.decode=device")
    metrics, objects = train(cfg)
    assert objects["datamodule"].decodes_on_device()
    assert metrics["test/acc"] > 0.5  # three colours, from JPEG bytes decoded in batches


def small_chunks(root: Path, per_class: int = 30) -> Path:
    """root/shards: two colours of photo (42 train, 12 val, 6 test) in chunks of ~4 images."""
    photos = write_class_tree(root / "photos", ("a", "b"), per_class)
    source = FolderDataModule(root=str(photos), artifacts_dir=str(root / "shards"))
    samples, names = source.split_samples(), source.class_names
    write_shards(samples, names, False, photos, root / "shards", workers=1, chunk_bytes="3kb")
    return root / "shards"


def test_a_train_split_smaller_than_a_batch_trains_alone_and_is_refused_under_ddp(
    tmp_path: Path,
) -> None:
    """42 train images, batches of 64: one process trains on a short batch (LitData would drop
    every item to whole batches); two DDP ranks would have no batch at all: one line."""
    shards = small_chunks(tmp_path)
    cfg = run_cfg(str(shards), tmp_path, "data.batch_size=64", "trainer.max_epochs=1")
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 1
    ranks = ShardsDataModule(root=str(shards), batch_size=32)
    ranks.trainer = fake_trainer(world_size=2)
    with pytest.raises(UserError, match=r"42 images, fewer than a batch .* data.batch_size=21"):
        ranks.setup()


def chunk_of_each_item(split: Path) -> list[int]:
    """The chunk each item of a split is in, by the split's index.json."""
    chunks = json.loads((split / "index.json").read_text())["chunks"]
    return [n for n, chunk in enumerate(chunks) for _ in range(chunk["chunk_size"])]


@pytest.mark.parametrize("world_size", [2, 3])
def test_each_rank_evaluates_a_contiguous_share_so_each_chunk_is_read_by_about_one_rank(
    tmp_path: Path, world_size: int
) -> None:
    shards = small_chunks(tmp_path)
    chunk_of = chunk_of_each_item(shards / "val")
    assert len(set(chunk_of)) >= 3  # several chunks, or the test shows nothing
    dm = ShardsDataModule(root=str(shards), batch_size=5, num_workers=0)
    dm.setup()
    every = torch.cat([labels for _, labels in dm.val_dataloader()])  # one process: all
    assert len(every) == len(chunk_of)
    shares, labels = [], []
    for rank in range(world_size):
        dm.trainer = fake_trainer(world_size=world_size, rank=rank)
        loader = dm.val_dataloader()
        shares.append(list(loader.sampler))
        labels.append(torch.cat([labels for _, labels in loader]))
    # every item once over the ranks, no padding duplicates, each rank a run of them
    assert [i for share in shares for i in share] == list(range(len(chunk_of)))
    assert torch.equal(torch.cat(labels), every)
    reads = sum(len({chunk_of[i] for i in share}) for share in shares)
    assert reads <= len(set(chunk_of)) + world_size - 1  # a chunk on a border: two ranks


class WorkerPids(Callback):
    """Appends, at each training epoch's end, the pids of the train loader's live workers
    (none where the loader keeps no workers between epochs)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        kept = trainer.datamodule._train_loader._iterator  # torch keeps persistent workers' here
        pids = sorted(w.pid for w in kept._workers) if kept is not None else []
        with open(self.path, "a") as f:
            f.write(f"{pids}\n")


@pytest.mark.slow(seconds=10)
def test_training_workers_live_through_the_run_and_each_epoch_draws_its_own_order(
    shards: Path, tmp_path: Path
) -> None:
    """Epochs cut short (limit_train_batches) leave a kept worker's own epoch count behind: each
    still draws the order of the epoch the loader is at, not the last one's again."""
    record = [
        "+callbacks.record._target_=tests.data.sources.test_shards.RecordBatches",
        f"+callbacks.record.path={tmp_path}/batches.txt",
        "+callbacks.pids._target_=tests.data.sources.test_shards.WorkerPids",
        f"+callbacks.pids.path={tmp_path}/pids.txt",
    ]
    cut_short = ["trainer.max_epochs=3", "+trainer.limit_train_batches=2", "test=false"]
    cfg = run_cfg(str(shards), tmp_path, "data.augment.preset=none", *cut_short, *record)
    train(cfg)
    pids = (tmp_path / "pids.txt").read_text().splitlines()
    assert len(pids) == 3
    assert pids[0] != "[]"
    assert len(set(pids)) == 1  # the same worker every epoch
    batches = steps_seen(tmp_path / "batches.txt")
    assert len(batches) == 6
    assert len(set(batches.values())) == 6  # no epoch replays another's batches


def test_the_chunk_cache_defaults_beside_the_data_and_takes_a_size(tmp_path: Path) -> None:
    cfg = run_cfg(str(tmp_path), tmp_path, "paths.data_dir=/data", "data.cache_size=300GB")
    assert cfg.data.cache_dir == "/data/.shards-cache"  # a disk, kept across runs; not $TMPDIR
    shards = small_chunks(tmp_path)
    dm = instantiate(run_cfg(str(shards), tmp_path, "data.cache_size=300GB").data)
    dm.setup()
    assert dm.splits.train.max_cache_size == "300GB"  # LitData's max_cache_size
    with pytest.raises(UserError, match=r"data\.cache_size=lots: "):
        instantiate(run_cfg(str(shards), tmp_path, "data.cache_size=lots").data)


def test_litdata_still_resolves_its_cache_size_as_the_cache_does() -> None:
    """ShardsDataModule.cache_cap reports the cap with LitData's private resolver, the one its
    Cache applies to max_cache_size."""
    from litdata.streaming.cache import Cache
    from litdata.utilities.format import _resolve_max_cache_size

    assert _resolve_max_cache_size("2GB") == 2 * 10**9
    assert "_resolve_max_cache_size(max_cache_size" in inspect.getsource(Cache.__init__)


def test_litdata_still_takes_whole_chunks_for_indexed_reads_from_its_private_switch() -> None:
    """A shards split reads whole chunks for evaluation's indexed reads (a byte range of a chunk
    whose items sit in LitData's Arrow footer reads empty): LitData's Cache is made from
    StreamingDataset._on_demand_bytes."""
    from litdata import StreamingDataset

    source = inspect.getsource(StreamingDataset)
    assert "on_demand_bytes=self._on_demand_bytes" in source


def cut_short(chunk: Path) -> None:
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])


def test_a_truncated_chunk_fails_a_run_in_one_line(
    tmp_path: Path, command_exit, capfd: pytest.CaptureFixture
) -> None:
    shards = small_chunks(tmp_path)
    chunk = shards / "train" / "chunk-0-1.bin"
    size = chunk.stat().st_size
    cut_short(chunk)
    args = [*RUN, f"data.root={shards}", f"paths.log_dir={tmp_path}/logs"]
    assert command_exit(train_main, "train.py", *args) == 1
    printed = capfd.readouterr()
    shown = printed.out + printed.err
    (line,) = [line for line in shown.splitlines() if "UserError" in line]  # one line
    assert line.endswith(
        f"UserError: The shard file {chunk} is damaged: {size // 2} bytes, its index.json says "
        f"{size} (cut short). Copy it again, or write the shards again (imgcls-prepare SRC DST "
        f"--format shards); imgcls-verify data=shards data.root={shards} lists every one."
    )
    assert "Traceback" not in shown


def upload(client: Any, shards: Path, bucket: str, prefix: str) -> None:
    client.create_bucket(Bucket=bucket)
    for path in shards.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(shards)}")


def test_a_bucket_run_says_where_its_cache_is_and_refuses_a_truncated_chunk(
    tmp_path: Path, s3_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    import boto3

    shards = small_chunks(tmp_path)
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    upload(client, shards, "photos", "v1")
    endpoint = [
        f"+data.storage_options.endpoint_url={s3_server}",
        "+data.storage_options.region_name=us-east-1",
        f"data.cache_dir={tmp_path}/cache",
    ]
    cfg = run_cfg("s3://photos/v1", tmp_path, *endpoint, "data.cache_size=20KB")
    caplog.set_level(logging.INFO, logger="imgcls.data.sources.shards")
    instantiate(cfg.data).setup()
    said = [r.getMessage() for r in caplog.records if r.name == "imgcls.data.sources.shards"]
    assert said[0] == (
        f"Chunks streamed from s3://photos/v1 are cached in {tmp_path}/cache (this node's), at "
        "most 20.0 KB for each split (data.cache_size=20KB)"
    )
    train_bytes = sum(p.stat().st_size for p in (shards / "train").glob("chunk-*.bin"))
    assert said[1].startswith(
        f"The chunk cache (20.0 KB a split) is smaller than train ({train_bytes / 1000:.1f} KB): "
        "every epoch downloads it again"
    )  # val and test fit
    assert len(said) == 2

    chunk = shards / "val" / "chunk-0-1.bin"
    cut_short(chunk)
    client.upload_file(str(chunk), "photos", "v1/val/chunk-0-1.bin")  # cut short on the server
    with pytest.raises(
        UserError, match=re.escape("s3://photos/v1/val/chunk-0-1.bin is damaged: ")
    ) as err:
        instantiate(cfg.data).setup()
    assert "\n" not in str(err.value)
