"""Atomic checkpoint writes: a kill or a failed write during a save never corrupts the last good file.

Lightning's default writes through an fsspec transaction whose temporary file lives in the system temp directory,
so the final move can be a copy across file systems. Here the bytes go to a temporary file beside the target, are
flushed to disk, and replace the target with one `os.replace` (atomic on POSIX within a file system).

A full disk (or quota) during the write: the partial temporary file is removed, the previous checkpoint is left as
it was, and the run stops with one line saying so (CheckpointError), rather than train on without checkpoints.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from trainer.errors import CheckpointError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            raise CheckpointError(
                f"no space left on the device while writing checkpoint '{path}' ({os.strerror(e.errno)}): the "
                "previous checkpoint is kept as it was; free space and continue with resume=auto"
            ) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        atomic_torch_save(checkpoint, path)
