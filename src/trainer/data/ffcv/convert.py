"""The .beton files of the project's data configs: written from a `conf/write_ffcv.yaml` config
(scripts/write_ffcv.py: a folder's split, or a CIFAR archive's), and the bundled sample set's files, written once
and reused (`ensure_beton`, a cache safe for several processes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from trainer.data.ffcv.format import BetonInfo, check_beton, require_ffcv, sidecar_path
from trainer.data.ffcv.writer import WriteOptions, WriteResult, write_beton
from trainer.errors import ConfigError, DataError

__all__ = ["ensure_beton", "write_from_config", "write_options"]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `<path>.lock` (processes writing the same cached file wait for each other)."""
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_beton(
    split_dir: str | os.PathLike,
    out: str | os.PathLike,
    classes: Sequence[str],
    options: WriteOptions,
    *,
    split: str,
) -> BetonInfo:
    """Write `out` from `split_dir` unless it already holds that split, written that way: a cache (the bundled
    sample set's .beton files). Safe when several processes (DDP ranks) ask at once."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        if out.exists() and sidecar_path(out).exists():
            try:
                info = check_beton(out)
                if (
                    info.classes == list(classes)
                    and info.write == options.stored()
                    and info.source == str(Path(split_dir).resolve())
                ):
                    return info
            except DataError:
                pass  # stale or damaged: written again below
        write_beton(split_dir, out, classes, options, split=split, overwrite=True, progress=False)
        return check_beton(out)


def write_from_config(cfg: Any) -> WriteResult:
    """scripts/write_ffcv.py: write `cfg.split` of the data config's folders (conf/write_ffcv.yaml)."""
    from trainer.data.folder import validate_layout
    from trainer.data.sample import write_sample_set

    require_ffcv("writing a .beton")
    data = cfg.data
    split = str(cfg.split)
    if split not in ("train", "val"):
        raise ConfigError(f"split='{split}' is not one of train, val")
    from omegaconf import OmegaConf

    if data.get("dataset") is not None:  # a CIFAR archive (trainer.data.cifar)
        return _write_cifar(cfg, split)
    if OmegaConf.is_missing(data, "root") or not data.get("root"):
        raise ConfigError("data.root is not set: give the ImageNet-layout folder to convert (data.root=<folder>)")
    root = Path(str(data.root))
    out = cfg.get("out") or (None if OmegaConf.is_missing(data, f"{split}_beton") else data.get(f"{split}_beton"))
    if not out:
        raise ConfigError("out is not set: give the .beton to write (out=<file.beton>)")
    if data.get("sample"):
        write_sample_set(root, size=int(data.get("sample_size", 32)))
    names = {"train": str(data.get("train_split", "train")), "val": str(data.get("val_split", "val"))}
    # The folder loader's mapping: the sorted class folders, shared by both splits where both are present.
    present = [name for name in names.values() if (root / name).is_dir()]
    classes = validate_layout(root, present if names[split] in present else [names[split]])
    expected = data.get("num_classes")
    if expected is not None and len(classes) != int(expected):
        raise DataError(f"data.root '{root}' holds {len(classes)} class folders but data.num_classes={expected}")
    return write_beton(
        root / names[split],
        out,
        classes,
        write_options(cfg),
        split=split,
        overwrite=bool(cfg.overwrite),
        progress=bool(cfg.progress),
    )


def _write_cifar(cfg: Any, split: str) -> WriteResult:
    """`split` of a CIFAR archive (data=cifar10 / cifar100, the data module's split and val_split) to
    `out`, by default `<data.root>_ffcv/<split>.beton` (data=cifar10_ffcv's files)."""
    from trainer.data.cifar import load_split

    data = cfg.data
    root = Path(str(data.root))
    images, labels, classes = load_split(
        root,
        str(data.dataset),
        split,
        str(data.get("label_type", "fine")),
        int(data.get("val_split", 0) or 0),
        bool(data.get("verify", False)),
    )
    out = cfg.get("out") or root.with_name(root.name + "_ffcv") / f"{split}.beton"
    return write_beton(
        root,
        out,
        classes,
        write_options(cfg),
        split=split,
        overwrite=bool(cfg.overwrite),
        progress=bool(cfg.progress),
        arrays=(images, labels),
    )


def write_options(cfg: Any) -> WriteOptions:
    """The write options of a conf/write_ffcv.yaml config. `write_mode` null: raw for a CIFAR archive (the exact
    32x32 pixels the papers train on), FFCV's ImageNet `proportion` for a folder."""
    cifar = cfg.data.get("dataset") is not None
    return WriteOptions(
        write_mode=str(cfg.write_mode or ("raw" if cifar else "proportion")),
        max_resolution=None if cfg.max_resolution is None else int(cfg.max_resolution),
        max_side=str(cfg.max_side),
        jpeg_quality=int(cfg.jpeg_quality),
        compress_probability=float(cfg.compress_probability),
        smart_threshold=None if cfg.smart_threshold is None else int(cfg.smart_threshold),
        num_workers=None if cfg.num_workers is None else int(cfg.num_workers),
        chunk_size=int(cfg.chunk_size),
        page_size=int(cfg.page_size),
        on_bad_image=str(cfg.on_bad_image),
    )
