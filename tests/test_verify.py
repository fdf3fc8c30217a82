"""verify.py: every problem of a photo folder, a CSV listing, a Hugging Face dataset or shards,
found up front and listed."""

from pathlib import Path

from imgcls.verify import verify
from tests.data_factory import BAD, photo_tree, write_hf_dataset, write_label_csv, write_shard_set


def test_verify_lists_every_problem(make_cfg, tmp_path: Path) -> None:
    root = photo_tree(tmp_path / "photos")
    cfg = make_cfg("data=folder", f"data.root={root}", config_name="verify")
    problems = dict(verify(cfg))
    assert {Path(p).name for p in problems} == {*BAD, "empty_class"}
    assert problems[str(root / "green" / "empty.jpg")] == "empty file (0 bytes)"
    assert (tmp_path / "run" / "problems.csv").read_text().count("\n") == len(BAD) + 2


def test_verify_lists_the_rows_of_a_csv_training_would_leave_out(make_cfg, tmp_path: Path) -> None:
    listing = write_label_csv(tmp_path / "labelled")  # rows with one label and with two
    (tmp_path / "labelled" / "cat" / "000.jpg").write_bytes(b"")  # a file, not an image
    with open(listing, "a") as f:
        f.write("nope.jpg,cat\ncat/001.jpg,\n")
    cfg = make_cfg("data=csv", f"data.csv={listing}", config_name="verify")
    problems = dict(verify(cfg))
    assert problems == {
        "labels.csv line 62": f"no such file {tmp_path / 'labelled' / 'nope.jpg'}",
        "labels.csv line 63": "001.jpg: no label",
        str(tmp_path / "labelled" / "cat" / "000.jpg"): "empty file (0 bytes)",
    }


def test_verify_lists_the_chunks_of_shards_missing_or_cut_short(make_cfg, tmp_path: Path) -> None:
    shards = write_shard_set(tmp_path)
    cfg = make_cfg("data=shards", f"data.root={shards}", config_name="verify")
    assert verify(cfg) == []  # every chunk whole
    train, val = shards / "train" / "chunk-0-0.bin", shards / "val" / "chunk-0-0.bin"
    size = train.stat().st_size
    train.write_bytes(train.read_bytes()[:100])  # a copy cut short
    val_size = val.stat().st_size
    val.unlink()
    problems = dict(verify(cfg))
    assert problems == {
        str(train): f"damaged: 100 bytes, its index.json says {size} (cut short)",
        str(val): f"missing (its index.json lists it, {val_size} bytes)",
    }
    assert (tmp_path / "run" / "problems.csv").read_text().count("\n") == 3


def test_verify_lists_the_rows_of_a_dataset_that_cannot_be_read_or_used(
    make_cfg, tmp_path: Path
) -> None:
    extra = [(b"<html></html>", 0), (None, 1), (b"\xff\xd8\xff", -1)]
    dataset = write_hf_dataset(tmp_path, per_class=5, extra=extra)
    cfg = make_cfg("data=hf", f"data.path={dataset}", config_name="verify")
    assert dict(verify(cfg)) == {
        "train[12]": "no label",
        "train[10]": "not an image file (no known image format)",
        "train[11]": "the row has no image",
    }
