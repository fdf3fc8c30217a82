"""Writes that a kill or a full disk cannot turn into a corrupt file: checkpoints, and any
file written whole (`written_whole`: cached features, predictions.csv, a prepared photo).

Lightning's own save goes through an fsspec transaction whose temporary file lives in the system
temp dir; committing it is a copy whenever that is another filesystem than the run's (a tmpfs
/tmp, checkpoints on NFS), and a kill during the copy leaves a half-written `last.ckpt`. Here the
checkpoint is written next to its final name, flushed to disk, then renamed over it: the old file
stays whole until the new one is. Remote paths (s3://, ...) keep Lightning's behaviour.
"""

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from imgcls.utils.errors import UserError

PARTIAL_SUFFIX = ".partial"


@contextmanager
def written_whole(path: Path, shared: bool = False) -> Iterator[Path]:
    """The name to write `path`'s content to: beside it (so the rename is not a copy across
    file systems), renamed over `path` when the block ends and removed when it raises, so
    `path` is the old file or the whole new one whatever stops the writer; a kill leaves only
    the staged name, which the next write of `path` writes over. `shared`: a name processes may
    write at once (a cache runs fill side by side), each through a staged name of its own (the
    process id's), which a kill leaves behind and no later write takes."""
    owner = f".{os.getpid()}" if shared else ""
    staged = path.with_name(f".{path.name}{owner}{PARTIAL_SUFFIX}")
    try:
        yield staged
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with written_whole(path) as staged, open(staged, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        except BaseException as err:
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                kept = "is intact" if path.exists() else "did not exist yet"
                raise UserError(
                    f"No space left on the device while saving {path} ({err.strerror}). The "
                    f"previous file there {kept}. Free some space, then continue with "
                    "ckpt_path=last."
                ) from err
            raise
        return None
