"""Scan a dataset up front: `imgcls-verify data=folder data.root=DIR` (or `data=csv
data.csv=FILE`, `data=hf data.path=DIR|user/name`, `data=shards data.root=DIR|s3://...`).

Decodes every image of every split exactly as training would, and prints a table of the files
(or a dataset's rows) that cannot be read and why (and of the class folders without images, or
the CSV's or dataset's rows training would leave out); also written to `problems.csv` in the run
dir. Exit code 1 if any, so it can guard a data pipeline. Training itself skips such files
(`data.on_bad_image=skip`).
Shards: every chunk missing or not the size its split's index.json gives (a copy or upload
cut short), which a run refuses to start on.
"""

import csv
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from imgcls.data.decoding.images import BadImageError
from imgcls.data.loaders import auto_workers
from imgcls.data.sources.files import ImageReader
from imgcls.data.sources.folder import FolderDataModule
from imgcls.data.sources.shards import ShardsDataModule, check_chunks, read_meta
from imgcls.run.compose import instantiate
from imgcls.run.settle import settle
from imgcls.run.task import task_main
from imgcls.utils.errors import UserError
from imgcls.utils.paths import PATH_TEXT, shown


def problem(path: str, read: ImageReader) -> str | None:
    """Why the sample at `path` (a file, or a dataset's row) cannot be read as training reads
    it, or None."""
    try:
        read(path)
    except (BadImageError, OSError) as err:
        return str(err)
    return None


def find_problems(datamodule: FolderDataModule) -> list[tuple[str, str]]:
    """(path, reason) for every unreadable image, and what the source's layout holds that
    training leaves out (class folders without images, rows of a CSV that cannot be used)."""
    paths = sorted({p for samples in datamodule.split_samples().values() for p, _ in samples})
    problems = datamodule.layout_problems()
    problems += [
        (link, f"folder link to {target} skipped: it leads back into the dataset")
        for link, target in sorted(datamodule.skipped_links.items())
    ]
    with ProcessPoolExecutor(max_workers=auto_workers() + 1) as pool:
        read = ImageReader(datamodule.bytes_reader())  # files, or a dataset's rows, decoded
        reasons = pool.map(partial(problem, read=read), paths, chunksize=64)
        problems += [(p, r) for p, r in zip(paths, reasons, strict=True) if r is not None]
    return problems


def verify(cfg: DictConfig) -> list[tuple[str, str]]:
    settle(cfg)
    datamodule = instantiate(cfg.data)
    if isinstance(datamodule, ShardsDataModule):
        read_meta(datamodule.store)  # shards at all: one line if not
        problems = check_chunks(datamodule.store)[1]
        whole = f"Every chunk under {datamodule.root} is the size its index.json gives."
    elif isinstance(datamodule, FolderDataModule):
        # rows with several labels are rows like any other here; whether a run takes them is
        # its own
        datamodule.multilabel = datamodule.supports_multilabel
        problems = find_problems(datamodule)
        whole = f"All images under {datamodule.root} read correctly."
    else:
        raise UserError(f"{cfg.data._target_} is not read from image files: nothing to verify.")
    console = Console()
    if problems:
        table = Table(title=f"{len(problems)} problem(s) in {datamodule.root}")
        table.add_column("file", style="cyan", overflow="fold")
        table.add_column("problem", style="red")
        for path, reason in problems:
            table.add_row(shown(path), reason)
        console.print(table)
        out = Path(cfg.paths.output_dir) / "problems.csv"
        with open(out, "w", newline="", **PATH_TEXT) as f:
            csv.writer(f).writerows([("path", "problem"), *problems])
        console.print(f"Written to {out}")
    else:
        console.print(f"[green]{whole}")
    return problems


def verify_or_fail(cfg: DictConfig) -> None:
    """Verify; problems make the command fail (exit code 1), so it can guard a pipeline."""
    problems = verify(cfg)
    if problems:
        raise UserError(f"{len(problems)} problem(s) in the dataset: see the table above.")


main = task_main("verify", verify_or_fail)


if __name__ == "__main__":
    main()
