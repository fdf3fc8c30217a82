"""Images listed in a CSV with their labels (`data=csv data.csv=FILE`): one label per image, or
several (`model.task=multilabel`).

    path,labels,split
    photos/0001.jpg,cat,train
    photos/0002.jpg,cat;dog,val
    photos/0003.jpg,dog person,

`path` is relative to the CSV's folder (or `root`, or absolute); `labels` are separated by `;`,
commas (in a quoted cell) or spaces; `split` (optional) is train, val or test, and splits no row
names are carved from the train rows as for folders (`split`, `split_seed`, `folds`:
FolderDataModule's). The classes are `classes` where given, else every label of the train rows,
sorted. A row that cannot be used (no such file, no label, a label not among the classes,
several labels for one-label data, an unknown split) is reported in one line and left out, never
a crash; all of them are listed in `bad_rows.txt` in the run dir.
"""

import csv
import re
from functools import cached_property
from pathlib import Path

from imgcls.data.sources.files import Sample, label_problem, report_bad_rows, row_label
from imgcls.data.sources.folder import SPLIT_NAMES, FolderDataModule
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.paths import PATH_TEXT

log = get_logger(__name__)
COLUMNS = ("path", "labels", "split")
LABEL_SEPARATORS = re.compile(r"[;,\s]+")


class CsvDataModule(FolderDataModule):
    supports_multilabel = True
    expected = "Expected a CSV with columns path,labels[,split]."

    def __init__(
        self, csv: str, root: str | None = None, classes: list[str] | None = None, **kwargs
    ) -> None:
        """`root`: where relative paths start (default: the CSV's folder); `classes`: the class
        names in label order (default: the train rows' labels)."""
        self.csv_path = Path(csv).expanduser()
        super().__init__(root=root or str(self.csv_path.parent), **kwargs)
        self.classes = list(classes) if classes else None
        self.bad_rows: list[tuple[str, str]] = []  # (file and line, why it was left out)

    @cached_property
    def _rows(self) -> list[tuple[int, str, list[str], str]]:
        """(line, path, labels, split) of every row, as written."""
        if not self.csv_path.is_file():
            raise UserError(f"data.csv={self.csv_path} is not a file. {self.expected}")
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark
        with open(self.csv_path, newline="", **{**PATH_TEXT, "encoding": "utf-8-sig"}) as f:
            reader = csv.DictReader(f)
            fields = [name.strip().lower() for name in reader.fieldnames or []]
            if not {"path", "labels"} <= set(fields):
                raise UserError(
                    f"data.csv={self.csv_path} has the columns {', '.join(fields) or 'none'}: "
                    f"{self.expected}"
                )
            reader.fieldnames = fields
            return [
                (
                    reader.line_num,
                    (row.get("path") or "").strip(),
                    [x for x in LABEL_SEPARATORS.split(row.get("labels") or "") if x],
                    (row.get("split") or "").strip().lower() or "train",
                )
                for row in reader
            ]

    @property
    def class_names(self) -> list[str]:
        if self.classes:
            return self.classes
        return self._train_labels

    @cached_property
    def _train_labels(self) -> list[str]:
        labels = sorted(
            {x for _, _, labels, split in self._rows if split == "train" for x in labels}
        )
        if len(labels) < 2:
            raise UserError(
                f"The train rows of {self.csv_path} name {len(labels)} label(s): a classifier "
                "needs two or more."
            )
        return labels

    def listed_samples(self) -> dict[str, list[Sample]]:
        """The samples of the splits the rows name; the bad rows reported and left out."""
        index = {name: i for i, name in enumerate(self.class_names)}
        samples: dict[str, list[Sample]] = {}
        self.bad_rows = []
        for line, path, labels, split in self._rows:
            file = (self.root / path) if path else None
            problem = self._problem(file, labels, split, index)
            if problem:
                self.bad_rows.append((f"{self.csv_path.name} line {line}", problem))
                continue
            label = row_label([index[x] for x in labels], len(index), self.multilabel)
            samples.setdefault(split, []).append((str(file), label))
        self._report_bad_rows()
        if "train" not in samples:
            raise UserError(f"{self.csv_path} has no usable train row. {self.expected}")
        return samples

    def _problem(
        self, file: Path | None, labels: list[str], split: str, index: dict[str, int]
    ) -> str | None:
        """Why a row cannot be used, or None."""
        if file is None:
            return "no path"
        if split not in SPLIT_NAMES:
            return f"split {split!r} is not one of {', '.join(SPLIT_NAMES)}"
        among = "data.classes" if self.classes else "the train rows' labels"
        problem = label_problem(labels, index, self.multilabel, among)
        if problem:
            return f"{file.name}: {problem}"
        if not file.is_file():
            return f"no such file {file}"
        return None

    def layout_problems(self) -> list[tuple[str, str]]:
        """The rows left out (call after `split_samples`)."""
        return list(self.bad_rows)

    def _report_bad_rows(self) -> None:
        report_bad_rows(self.bad_rows, str(self.csv_path), self.artifacts_dir)
