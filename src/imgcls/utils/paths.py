"""File names as text. File names are any bytes; Python holds the ones that are not UTF-8 as
surrogates (os.fsdecode). Text files that list paths (split.csv, bad_images.txt, a predict list)
are written and read with the same error handler, so every name round-trips byte for byte; logs
and tables show such bytes as \\xNN escapes (`shown`)."""

import os
from pathlib import Path

PATH_TEXT = {"encoding": "utf-8", "errors": "surrogateescape"}
#: the file in every run dir that says how the run ended (run/record.py writes it; sweeps,
#: their summary and run dirs read it)
STATUS_FILE = "status.json"


def shown(path: str | Path) -> str:
    """A path as printable text, for logs and tables."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
