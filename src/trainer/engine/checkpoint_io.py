"""Lightning's checkpoint I/O through the project's one reader and one atomic writer (trainer/io.py): a kill
or a failed write during a save never corrupts the last good file, and a full disk stops the run with one line.

Lightning's default writes through an fsspec transaction whose temporary file lives in the system temp directory,
so the final move can be a copy across file systems; `atomic_torch_save` writes beside the target instead.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from trainer.io import (
    WEIGHTS_ONLY,
    atomic_torch_save,
)

__all__ = ["AtomicCheckpointIO", "atomic_torch_save"]


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # resume reads under the one policy unless told otherwise, not torch's default (False before torch 2.6)
        policy = WEIGHTS_ONLY if weights_only is None else weights_only
        return super().load_checkpoint(path, map_location=map_location, weights_only=policy)
