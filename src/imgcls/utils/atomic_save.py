"""Checkpoint writes that a kill or a full disk cannot turn into a corrupt file.

Lightning's own save goes through an fsspec transaction whose temporary file lives in the system
temp dir; committing it is a copy whenever that is another filesystem than the run's (a tmpfs
/tmp, checkpoints on NFS), and a kill during the copy leaves a half-written `last.ckpt`. Here the
checkpoint is written next to its final name, flushed to disk, then renamed over it: the old file
stays whole until the new one is. Remote paths (s3://, ...) keep Lightning's behaviour.
"""

import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from imgcls.utils.errors import UserError

PARTIAL_SUFFIX = ".partial"


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}{PARTIAL_SUFFIX}")
        try:
            with open(staged, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(staged, path)
        except BaseException as err:
            staged.unlink(missing_ok=True)
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                kept = "is intact" if path.exists() else "did not exist yet"
                raise UserError(
                    f"No space left on the device while saving {path} ({err.strerror}). The "
                    f"previous file there {kept}. Free some space, then continue with "
                    "ckpt_path=last."
                ) from err
            raise
        return None
