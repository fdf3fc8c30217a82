"""utils/paths.py: file names as text, byte for byte: a name that is not UTF-8 round-trips
through a listing written and read with PATH_TEXT, and `shown` makes it printable."""

import csv
import os
from pathlib import Path

from imgcls.utils.paths import PATH_TEXT, shown

NON_UTF8 = b"caf\xe9 \xff.jpg"  # Latin-1 and a byte no encoding maps: a real, legal file name


def test_a_non_utf8_name_round_trips_through_a_listing(tmp_path: Path) -> None:
    image = Path(os.fsdecode(bytes(tmp_path) + b"/" + NON_UTF8))
    image.write_bytes(b"jpeg")
    (found,) = tmp_path.iterdir()  # as a folder listing meets it
    listing = tmp_path / "split.csv"
    with open(listing, "w", newline="", **PATH_TEXT) as f:
        csv.writer(f).writerows([["path", "label"], [str(found), "cat"]])
    assert NON_UTF8 in listing.read_bytes()  # the name's own bytes, not a replacement
    with open(listing, newline="", **PATH_TEXT) as f:
        (row,) = csv.DictReader(f)
    assert os.fsencode(row["path"]) == bytes(tmp_path) + b"/" + NON_UTF8
    assert Path(row["path"]).read_bytes() == b"jpeg"  # the same file, found again


def test_shown_escapes_the_bytes_that_are_not_utf8() -> None:
    name = os.fsdecode(NON_UTF8)
    assert shown(name) == "caf\\xe9 \\xff.jpg"
    assert shown(Path("/data") / name) == "/data/caf\\xe9 \\xff.jpg"
    shown(name).encode("utf-8")  # printable anywhere: no lone surrogates left


def test_shown_leaves_utf8_names_as_they_are() -> None:
    assert shown("/data/café 猫.jpg") == "/data/café 猫.jpg"
    assert shown(Path("plain.png")) == "plain.png"
