"""verify.py: every problem of a photo folder found up front, and listed."""

from pathlib import Path

from imgcls.verify import verify
from tests.data_factory import BAD, photo_tree


def test_verify_lists_every_problem(make_cfg, tmp_path: Path) -> None:
    root = photo_tree(tmp_path / "photos")
    cfg = make_cfg("data=folder", f"data.root={root}", config_name="verify")
    problems = dict(verify(cfg))
    assert {Path(p).name for p in problems} == {*BAD, "empty_class"}
    assert problems[str(root / "green" / "empty.jpg")] == "empty file (0 bytes)"
    assert (tmp_path / "run" / "problems.csv").read_text().count("\n") == len(BAD) + 2
