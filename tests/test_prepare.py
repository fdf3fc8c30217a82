"""imgcls-prepare: a smaller, plainer copy of a photo tree, resumable, bad files listed."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.data.decoding.images import parse_header, read_rgb
from imgcls.data.sources.folder import FolderDataModule
from imgcls.prepare import SKIPPED_FILE, main, prepare
from imgcls.utils.atomic_save import PARTIAL_SUFFIX

_y, _x = np.mgrid[0:600, 0:800]
PHOTO = np.stack([_x * 0.3, _y * 0.4, 255 - _x * 0.2], axis=2).astype(np.uint8)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (src / split / name).mkdir(parents=True)
            Image.fromarray(PHOTO).save(src / split / name / "big.jpg", quality=95)
            Image.fromarray(PHOTO[:80, :100]).save(src / split / name / "small.jpg")
    Image.fromarray(PHOTO).convert("RGBA").save(src / "train" / "cat" / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    Image.fromarray(PHOTO).save(src / "train" / "dog" / "rotated.jpg", exif=exif)
    (src / "train" / "dog" / "empty.jpg").write_bytes(b"")
    (src / "train" / "dog" / ".hidden.jpg").write_bytes(b"")
    (src / "train" / "dog" / "loop").symlink_to(".")  # back into the tree: not followed
    elsewhere = tmp_path / "elsewhere" / "fox"
    elsewhere.mkdir(parents=True)
    Image.fromarray(PHOTO[:80, :100]).save(elsewhere / "small.jpg")
    (src / "val" / "fox").symlink_to(elsewhere)  # a class folder linked in, as people do
    return src


def test_prepared_copy_is_smaller_plain_and_complete(photos: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    skipped = prepare(photos, dst, workers=2)
    assert [Path(s).name for s, _ in skipped] == ["empty.jpg"]
    assert "empty.jpg" in (dst / SKIPPED_FILE).read_text()
    written = sorted(str(p.relative_to(dst)) for p in dst.rglob("*.jpg"))
    assert written == [
        "train/cat/alpha.jpg",
        "train/cat/big.jpg",
        "train/cat/small.jpg",
        "train/dog/big.jpg",
        "train/dog/rotated.jpg",
        "train/dog/small.jpg",
        "val/cat/big.jpg",
        "val/cat/small.jpg",
        "val/dog/big.jpg",
        "val/dog/small.jpg",
        "val/fox/small.jpg",
    ]
    for path in dst.rglob("*.jpg"):
        header = parse_header(path.read_bytes())
        assert (header.format, header.mode, header.progressive) == ("JPEG", "RGB", False)
        assert header.orientation in (None, 1)
        assert min(header.size) <= 320
    assert parse_header((dst / "train/cat/big.jpg").read_bytes()).size == (427, 320)
    assert parse_header((dst / "train/dog/rotated.jpg").read_bytes()).size == (320, 427)
    small = photos / "train/cat/small.jpg"
    assert (dst / "train/cat/small.jpg").read_bytes() == small.read_bytes()  # copied as it is
    shrunk = read_rgb(dst / "train/cat/big.jpg").permute(1, 2, 0).numpy().astype(float)
    original = Image.fromarray(PHOTO).resize((427, 320), Image.Resampling.LANCZOS)
    assert np.abs(shrunk - np.asarray(original)).mean() < 3  # the same picture
    dm = FolderDataModule(root=str(dst))
    assert dm.class_names == ["cat", "dog"]


def test_a_stopped_copy_resumes_where_it_stopped(photos: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    prepare(photos, dst, workers=1)
    kept = dst / "train/cat/big.jpg"
    kept_time = kept.stat().st_mtime_ns
    (dst / "val/dog/big.jpg").unlink()  # as if killed before writing it...
    (dst / f"val/dog/.big.jpg{PARTIAL_SUFFIX}").write_bytes(b"half")  # ...while writing it
    prepare(photos, dst, workers=1)
    assert not list(dst.rglob(f"*{PARTIAL_SUFFIX}"))  # the half file written over
    assert kept.stat().st_mtime_ns == kept_time  # done work is not redone
    assert parse_header((dst / "val/dog/big.jpg").read_bytes()).size == (427, 320)


def test_the_command_prints_the_root_to_train_on(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    dst = tmp_path / "dst"
    command = ["imgcls-prepare", str(photos), str(dst), "--long-side", "200"]
    monkeypatch.setattr(sys, "argv", command)
    main()
    assert f"data.root={dst}" in capsys.readouterr().out.replace("\n", "")
    assert max(parse_header((dst / "train/cat/big.jpg").read_bytes()).size) == 200


def test_a_folder_without_images_is_one_line_not_an_empty_copy(tmp_path: Path) -> None:
    (tmp_path / "src" / "notes").mkdir(parents=True)
    (tmp_path / "src" / "notes" / "readme.txt").write_text("no photos here")
    with pytest.raises(SystemExit, match=r"No image files under .*class folders"):
        prepare(tmp_path / "src", tmp_path / "dst", workers=1)
    assert not (tmp_path / "dst").exists()
