"""End to end on an image folder with bad files in it: training skips them and lists them, and
`verify` finds each of them up front."""

from pathlib import Path

from imgcls.train import train
from imgcls.verify import verify
from tests.data_factory import write_class_tree

BAD = {"empty.jpg": b"", "html.jpg": b"<html></html>", "cut.png": b"\x89PNG\r\n\x1a\n\0\0"}


def photo_tree(root: Path) -> Path:
    write_class_tree(root, ["red", "green", "blue"], per_class=30)
    for name, content in BAD.items():
        (root / "green" / name).write_bytes(content)
    (root / "blue" / ".DS_Store").write_bytes(b"\0")
    (root / "empty_class").mkdir()
    return root


def test_training_on_a_folder_skips_and_lists_bad_files(make_cfg, tmp_path: Path) -> None:
    root = photo_tree(tmp_path / "photos")
    cfg = make_cfg(
        "data=folder",
        f"data.root={root}",
        "data.augment=cifar",
        "data.batch_size=16",
        "data.num_workers=0",
        "model=cifar_quick",
        "optimizer.lr=0.05",
        "trainer.max_epochs=6",
    )
    metrics, objects = train(cfg)
    assert objects["datamodule"].class_names == ["blue", "green", "red"]
    assert metrics["test/acc"] > 0.9  # three flat colours
    listed = (tmp_path / "run" / "bad_images.txt").read_text().splitlines()
    assert {Path(line.split("\t")[0]).name for line in listed} <= set(BAD)
    assert (tmp_path / "run" / "split.csv").is_file()


def test_verify_lists_every_problem(make_cfg, tmp_path: Path) -> None:
    root = photo_tree(tmp_path / "photos")
    cfg = make_cfg("data=folder", f"data.root={root}", config_name="verify")
    problems = dict(verify(cfg))
    assert {Path(p).name for p in problems} == {*BAD, "empty_class"}
    assert problems[str(root / "green" / "empty.jpg")] == "empty file (0 bytes)"
    assert (tmp_path / "run" / "problems.csv").read_text().count("\n") == len(BAD) + 2
