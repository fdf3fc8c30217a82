"""utils/atomic_save.py: a checkpoint is written beside its name and renamed over it, so a
failing save (an error, a kill, a full disk) leaves the previous file whole and no `.partial`."""

import errno
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from imgcls.utils.atomic_save import PARTIAL_SUFFIX, AtomicCheckpointIO
from imgcls.utils.errors import UserError

FIRST = {"global_step": 2, "state_dict": {"w": torch.arange(6.0)}}
SECOND = {"global_step": 4, "state_dict": {"w": torch.ones(6)}}


def step_in(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(PARTIAL_SUFFIX))


@pytest.fixture
def last(tmp_path: Path) -> Path:
    """checkpoints/last.ckpt, saved once (step 2)."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(FIRST, path)  # the folder made
    return path


def saving_fails(monkeypatch: pytest.MonkeyPatch, err: BaseException) -> None:
    """torch.save writes part of the checkpoint, then `err` (a disk filling up mid-write)."""

    def half_written(obj: object, f, *args, **kwargs) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise err

    monkeypatch.setattr("imgcls.utils.atomic_save.torch.save", half_written)


def test_a_save_writes_the_whole_file_and_leaves_no_partial(last: Path) -> None:
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 2
    assert torch.equal(saved["state_dict"]["w"], FIRST["state_dict"]["w"])
    AtomicCheckpointIO().save_checkpoint(SECOND, last)  # over the previous one
    assert step_in(last) == 4
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


def test_a_failing_save_leaves_the_previous_file_intact(
    last: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saving_fails(monkeypatch, RuntimeError("pickling failed"))
    with pytest.raises(RuntimeError, match="pickling failed"):  # not ours to reword
        AtomicCheckpointIO().save_checkpoint(SECOND, last)
    assert step_in(last) == 2
    assert leftovers(last.parent) == []


def test_a_kill_during_a_save_leaves_the_previous_file_intact(
    last: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (KeyboardInterrupt) mid-write; a SIGKILL leaves the `.partial` beside it, which
    the next save of the same name writes over."""
    saving_fails(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint(SECOND, last)
    assert step_in(last) == 2
    assert leftovers(last.parent) == []
    monkeypatch.undo()
    killed = last.with_name(f".last.ckpt{PARTIAL_SUFFIX}")  # what a SIGKILL mid-write leaves
    killed.write_bytes(b"PK\x03\x04 cut short")
    AtomicCheckpointIO().save_checkpoint(SECOND, last)
    assert step_in(last) == 4
    assert leftovers(last.parent) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
def test_a_full_disk_is_one_line_naming_the_intact_file(
    last: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    saving_fails(monkeypatch, OSError(code, "No space left on device"))
    with pytest.raises(UserError) as err:
        AtomicCheckpointIO().save_checkpoint(SECOND, last)
    assert str(err.value) == (
        f"No space left on the device while saving {last} (No space left on device). The "
        "previous file there is intact. Free some space, then continue with ckpt_path=last."
    )
    assert isinstance(err.value.__cause__, OSError)
    assert step_in(last) == 2
    assert leftovers(last.parent) == []


def test_a_full_disk_on_the_first_save_says_there_was_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saving_fails(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    path = tmp_path / "epoch_000.ckpt"
    with pytest.raises(UserError, match=r"The previous file there did not exist yet\."):
        AtomicCheckpointIO().save_checkpoint(FIRST, path)
    assert list(tmp_path.iterdir()) == []


def test_another_os_error_is_not_called_a_full_disk(
    last: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saving_fails(monkeypatch, PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(PermissionError):
        AtomicCheckpointIO().save_checkpoint(SECOND, last)
    assert step_in(last) == 2


def test_a_remote_path_keeps_lightnings_save(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(
        TorchCheckpointIO, "save_checkpoint", lambda self, *args: calls.append(args)
    )
    AtomicCheckpointIO().save_checkpoint(FIRST, "s3://bucket/run/last.ckpt")
    assert calls == [(FIRST, "s3://bucket/run/last.ckpt", None)]
