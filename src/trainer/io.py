"""Checkpoints and weight files: the one reader, the raw / EMA weight choice, wrapper-prefix stripping and the one
atomic writer.

A top-level module rather than one in `engine/`: the models (`model.init_from`), the data (the sample set), the
engine (Lightning's checkpoint I/O, resume), `evaluate`, `hub`, the sweeps and the scripts all read or write through
it, and it imports only torch and `trainer.errors`, so none of them meets an import cycle (`engine/` imports the
models package).

Reading: every torch file is loaded with `weights_only=True`, on the CPU (`WEIGHTS_ONLY`). A checkpoint written by
train.py holds tensors and plain containers only (its config is saved as a plain dict), so nothing this package
reads needs the full unpickler, which can run code. `weights_only=True` is torch's own default since 2.6; resuming
reads through Lightning with it too (engine/checkpoint_io.py). A file that needs more is refused with one line saying
so, whoever wrote it.

Weights: a train.py checkpoint holds the trained weights under `model.*` and, where the run kept an exponential
moving average, the averaged ones under `ema.module.*`; `raw` and `ema` name them everywhere (`eval.weights`, the
export's `weights`), and null means the default of whoever asks.

Writing: `atomic_path` (a file written by name; `atomic_write` for a file object, `atomic_write_text`,
`atomic_torch_save`) and `atomic_folder` (a folder) write beside the target and move the result over it with one
`os.replace`, atomic on POSIX within a file system: a kill, a full disk or an exception during the write never
leaves a partial file at the target, and the previous version stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from trainer.errors import CheckpointError, ConfigError

WEIGHTS_ONLY = True  # the policy above: tensors and plain containers, never arbitrary pickled objects
WEIGHTS = ("raw", "ema")
WEIGHT_PREFIXES = {"raw": "model.", "ema": "ema.module."}  # the LightningModule's `model` and timm's ModelEmaV3
_COMPILED = "_orig_mod."  # torch.compile's wrapper module (our models compile in place, without it)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


# ---------------------------------------------------------------------------------------------------------------
# reading


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def load(path: str | Path, *, what: str = "weights file", mmap: bool = False) -> Any:
    """The object saved in `path` (a `.safetensors` file: its tensors), read under the policy above. A failure is a
    one-line CheckpointError naming `what` was read and the file."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=WEIGHTS_ONLY, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        example = f" (e.g. {found.group(1)})" if found else ""
        raise CheckpointError(
            f"'{path}' holds pickled Python objects{example}, not only tensors; refusing to unpickle it since that can "
            f"run code: re-save it as a plain state_dict (torch.save(model.state_dict(), ...)) or as safetensors"
        ) from None
    except Exception as e:  # a torn or foreign file: say which
        raise CheckpointError(f"cannot read {what} '{path}': {_first_line(e)}") from None


def read_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint written by train.py (`state_dict` and the saved config, `trainer_config`); anything else is
    refused with one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt '{path}' does not exist")
    checkpoint = load(path, what="checkpoint", mmap=mmap)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"'{path}' is not a Lightning checkpoint (no state_dict)")
    if not checkpoint.get("trainer_config"):
        raise CheckpointError(f"'{path}' has no saved config (trainer_config): not a checkpoint written by train.py")
    return checkpoint


# ---------------------------------------------------------------------------------------------------------------
# raw / EMA weights and wrapper prefixes


def strip_prefixes(state_dict: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """A copy of `state_dict` with the wrapper `prefixes` removed from its keys, repeatedly and in any order
    ("model._orig_mod.module.x" -> "x" for DDP's, torch.compile's and a LightningModule's)."""
    state, prefixes = dict(state_dict), tuple(prefixes)
    while found := next((p for p in prefixes if any(k.startswith(p) for k in state)), None):
        consume_prefix_in_state_dict_if_present(state, found)
    return state


def has_ema(state_dict: Mapping[str, Any]) -> bool:
    """Whether a train.py checkpoint's state_dict holds EMA weights (the run had ema.decay set)."""
    return any(k.startswith(WEIGHT_PREFIXES["ema"]) for k in state_dict)


def model_weights(state_dict: Mapping[str, Any], kind: str) -> dict[str, torch.Tensor]:
    """The backbone's own state_dict for weights `kind` (raw or ema) out of a train.py checkpoint's state_dict."""
    prefix = WEIGHT_PREFIXES[kind]
    state = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
    consume_prefix_in_state_dict_if_present(state, prefix)  # once: a backbone may have a submodule named `model`
    consume_prefix_in_state_dict_if_present(state, _COMPILED)
    return state


def select_weights(requested: str | None, holds_ema: bool, *, key: str, path: str | Path) -> list[str]:
    """The weights `key=requested` names: [requested], or for null each set the checkpoint `path` holds, raw first
    (the caller says what null means: evaluate measures both, an export ships the last, the EMA where there is one)."""
    if requested is not None and requested not in WEIGHTS:
        raise ConfigError(f"{key}='{requested}' is not one of {', '.join(WEIGHTS)} (or null)")
    if requested == "ema" and not holds_ema:
        raise CheckpointError(f"{key}=ema: checkpoint '{path}' has no EMA weights (trained without ema.decay)")
    if requested is None:
        return ["raw", "ema"] if holds_ema else ["raw"]
    return [requested]


# ---------------------------------------------------------------------------------------------------------------
# writing


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # makes the rename itself durable
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """The one atomic writer: a temporary file beside `path` to write by name (a writer that takes a file name,
    such as ffcv's DatasetWriter); when the block ends it is flushed to disk and moved over `path`, and on an
    exception it is removed and `path` is left as it was. It has the permissions `open` would give (mkstemp's are
    owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())
        finally:
            os.close(fd)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes reach the disk before the rename makes them the file
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """`atomic_path` for a writer that takes a file object: `open(<the temporary file>, mode, **open_kwargs)`."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)` through `atomic_write`. A full disk (or quota) stops the run with one line saying so
    (CheckpointError), rather than let it train on without checkpoints."""
    try:
        with atomic_write(path, "wb") as f:
            torch.save(obj, f)
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise CheckpointError(
                f"no space left on the device while writing checkpoint '{path}' ({os.strerror(e.errno)}): the "
                "previous checkpoint is kept as it was; free space and continue with resume=auto"
            ) from None
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """An empty folder beside `path` to fill; when the block ends it becomes `path` with one rename, its files with
    the permissions `open` and `mkdir` would give them (mkdtemp's folder is owner-only, safetensors' files too).
    An existing `path` is replaced if `overwrite`, else only if it is an empty folder: a full one raises OSError
    (e.g. another process finished first). On an exception the folder is removed and `path` is left as it was.
    Its files are not fsynced one by one: both users (export, the sample set) are cheap to write again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield tmp
        mask = _umask()
        for item in [tmp, *tmp.rglob("*")]:
            item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)
        if overwrite and path.exists():
            shutil.rmtree(path)
        with contextlib.suppress(FileNotFoundError):
            if path.is_dir():
                path.rmdir()  # empty (else OSError): os.replace cannot replace a folder on every system
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(path.parent)


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a whole file, read in blocks (a .beton's class index records it; evaluate.py reports the
    checkpoint's)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
