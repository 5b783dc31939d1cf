"""Writing a split of an ImageNet-layout folder (or CIFAR's arrays) to a .beton, atomically, with its class index
beside it (trainer.data.ffcv.format): the images in the folder loader's order and labels, resized as ffcv resizes
them, undecodable ones skipped and listed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.ffcv.dataset_writer import WriteFailed, writer_class
from trainer.data.ffcv.format import FORMAT, read_layout, require_ffcv, sidecar_path, skipped_path, structure_digest
from trainer.errors import ConfigError, DataError
from trainer.io import atomic_path, atomic_write_text, sha256_of

__all__ = ["WriteOptions", "WriteResult", "write_beton"]

WRITE_MODES = ("raw", "jpg", "proportion", "smart")
MAX_SIDES = ("longer", "shorter")
BAD_IMAGE_POLICIES = ("skip", "fail")
MIN_PAGE_SIZE = 1 << 21  # ffcv's smallest page, 2 MiB
# -- options -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteOptions:
    """How images are stored (ffcv's RGBImageField), and how the write runs.

    `write_mode`: `raw` (uint8 pixels, decoded exactly as the folder loader decodes them), `jpg` (re-encoded as
    JPEG at `jpeg_quality`), `proportion` (each image JPEG with probability `compress_probability`, else raw) or
    `smart` (JPEG when the raw pixels would exceed `smart_threshold` bytes). `max_resolution` caps the `max_side`
    (`longer`, ffcv's rule, or `shorter`) with OpenCV's area resampling, as ffcv does; null keeps every size.
    Defaults: FFCV's ResNet-50 ImageNet files (500 px longer side, half JPEG at quality 90).
    """

    write_mode: str = "proportion"
    max_resolution: int | None = 500
    max_side: str = "longer"
    jpeg_quality: int = 90
    compress_probability: float = 0.5
    smart_threshold: int | None = None
    num_workers: int | None = None  # writer processes; null: every CPU
    chunk_size: int = 100  # images per work item
    page_size: int = 4 * MIN_PAGE_SIZE  # ffcv's default 8 MiB; a power of two >= 2 MiB
    on_bad_image: str = "skip"  # skip (listed in <out>.skipped.txt) | fail

    def __post_init__(self) -> None:
        if self.write_mode not in WRITE_MODES:
            raise ConfigError(f"write_mode='{self.write_mode}' is not one of {', '.join(WRITE_MODES)}")
        if self.max_side not in MAX_SIDES:
            raise ConfigError(f"max_side='{self.max_side}' is not one of {', '.join(MAX_SIDES)}")
        if self.max_resolution is not None and int(self.max_resolution) < 1:
            raise ConfigError(
                f"max_resolution must be a positive number of pixels (or null), got {self.max_resolution}"
            )
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if not 0.0 <= float(self.compress_probability) <= 1.0:
            raise ConfigError(f"compress_probability must be in [0, 1], got {self.compress_probability}")
        if self.num_workers is not None and int(self.num_workers) < 1:
            raise ConfigError(f"num_workers must be positive (or null: every CPU), got {self.num_workers}")
        if int(self.chunk_size) < 1:
            raise ConfigError(f"chunk_size must be positive, got {self.chunk_size}")
        page = int(self.page_size)
        if page < MIN_PAGE_SIZE or page & (page - 1) or page >= 1 << 32:
            raise ConfigError(f"page_size must be a power of two from 2 MiB ({MIN_PAGE_SIZE}) to 2 GiB, got {page}")
        if self.on_bad_image not in BAD_IMAGE_POLICIES:
            raise ConfigError(f"on_bad_image='{self.on_bad_image}' is not one of {', '.join(BAD_IMAGE_POLICIES)}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> WriteOptions:
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown .beton write option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def stored(self) -> dict[str, Any]:
        """What decides the file's content (recorded in the class index; the run-time knobs are left out)."""
        keys = ("write_mode", "max_resolution", "max_side", "jpeg_quality", "compress_probability", "smart_threshold")
        return {k: getattr(self, k) for k in keys}


# -- writing ---------------------------------------------------------------------------------------------------


@dataclass
class WriteResult:
    out: Path
    images: int  # images written
    skipped: list[tuple[str, str]]  # (path, reason) of the undecodable source images
    seconds: float
    size_bytes: int
    source_bytes: int
    page_size: int = 0  # ffcv's allocation unit: each writer process fills pages of its own
    workers: int = 0  # writer processes

    @property
    def images_per_sec(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        mib = 1 << 20
        line = (
            f"wrote {self.images} images to {self.out} in {self.seconds:.1f} s ({self.images_per_sec:.0f} images/s): "
            f"{self.size_bytes / mib:.1f} MiB, source images {self.source_bytes / mib:.1f} MiB "
            f"({self.size_bytes / max(self.source_bytes, 1):.2f}x)"
        )
        # measured: 360 digits (0.4 MiB) make 16 MiB with one writer and 24 MiB with two, at 8 MiB pages: ffcv
        # allocates whole pages, one per writer process plus one, however few images fill them
        if self.page_size and self.size_bytes <= (self.workers + 2) * self.page_size:
            line += (
                f"; most of it is ffcv's page allocation ({self.page_size / mib:g} MiB pages, one per writer process "
                f"plus one; {self.workers} writer(s)): page_size={MIN_PAGE_SIZE} or num_workers=1 makes a small set "
                f"smaller"
            )
        if self.skipped:
            line += f"; skipped {len(self.skipped)} undecodable image(s), listed in {skipped_path(self.out)}"
        return line


_PLACEHOLDER = np.zeros((1, 1, 3), dtype=np.uint8)


def _resize(pixels: np.ndarray, max_resolution: int | None, max_side: str) -> np.ndarray:
    """Cap the longer (ffcv's rule, its own arithmetic) or the shorter side at `max_resolution`, area resampling."""
    if max_resolution is None:
        return pixels
    import cv2

    size = np.array([pixels.shape[1], pixels.shape[0]])  # (width, height), as cv2 wants it
    side = size.max() if max_side == "longer" else size.min()
    ratio = max_resolution / side
    if ratio >= 1:
        return pixels
    new = (ratio * size).astype(int)
    if max_side == "shorter":
        new[np.argmin(size)] = max_resolution
    new = np.maximum(new, 1)
    return cv2.resize(pixels, (int(new[0]), int(new[1])), interpolation=cv2.INTER_AREA)


class _SourceImages:
    """The split as (pixels, label) in the folder loader's order, for ffcv's writer processes.

    An image that cannot be decoded becomes a 1x1 placeholder with label -1 (ffcv fixes the sample count before its
    workers start, so a sample cannot be dropped) and is reported on `bad`; the data module never reads it.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], options: WriteOptions, bad: Any) -> None:
        self.samples = list(samples)
        self.max_resolution = None if options.max_resolution is None else int(options.max_resolution)
        self.max_side = options.max_side
        self.bad = bad

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        from trainer.data.folder import load_rgb

        path, label = self.samples[index]
        try:
            pixels = np.asarray(load_rgb(path))
        except DataError as exc:
            self.bad.put((int(index), str(path), str(exc)))
            return _PLACEHOLDER, -1
        return _resize(pixels, self.max_resolution, self.max_side), int(label)


class _ArrayImages:
    """Images already in memory (CIFAR's arrays) as (pixels, label) for ffcv's writer processes."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])


def _source_samples(split_dir: Path, classes: Sequence[str]) -> list[tuple[str, int]]:
    from trainer.data.folder import ImageFolderDataset

    return list(ImageFolderDataset(split_dir, classes).samples)


def write_beton(
    split_dir: str | os.PathLike,
    out: str | os.PathLike,
    classes: Sequence[str],
    options: WriteOptions | None = None,
    *,
    split: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    arrays: tuple[np.ndarray, np.ndarray] | None = None,
) -> WriteResult:
    """Write the images under `split_dir` (`<class>/<image>`, labels = positions in `classes`) to the .beton `out`,
    with its class index beside it. With `arrays` (N x H x W x 3 uint8 images, N labels: CIFAR) those are written
    instead, and `split_dir` only names their source.

    Atomic: the file is written under a temporary name in the same folder and renamed into place only when it is
    complete, so a killed write, a full disk or a failing worker leaves nothing that looks valid (the partial file
    is removed). Undecodable source images are skipped, counted and listed in `<out>.skipped.txt` (or, with
    `on_bad_image=fail`, the write stops at the first one and writes nothing).
    """
    require_ffcv("writing a .beton")
    from ffcv.fields import IntField, RGBImageField

    options = options or WriteOptions()
    split_dir, out = Path(split_dir), Path(out)
    if out.suffix != ".beton":
        raise ConfigError(f"out='{out}' must name a .beton file")
    if out.exists() and not overwrite:
        raise DataError(f"'{out}' exists; pass overwrite=true to replace it")
    if not out.parent.is_dir():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create the folder of '{out}': {exc}") from None
    if arrays is None:
        samples: Sequence[Any] = _source_samples(split_dir, classes)
        source_bytes = sum(os.path.getsize(path) for path, _ in samples)
    else:
        samples = arrays[1]
        source_bytes = int(arrays[0].nbytes)
    Writer = writer_class()
    start = time.perf_counter()
    try:
        with atomic_path(out) as beton:  # renamed over `out` only once complete (trainer/io.py)
            writer = Writer(
                str(beton),
                {
                    "image": RGBImageField(
                        write_mode=options.write_mode,
                        max_resolution=None,  # resized by _SourceImages (either side)
                        smart_threshold=options.smart_threshold,
                        jpeg_quality=int(options.jpeg_quality),
                        compress_probability=float(options.compress_probability),
                    ),
                    "label": IntField(),
                },
                page_size=int(options.page_size),
                num_workers=int(options.num_workers or os.cpu_count() or 1),
                desc=f"{split or split_dir.name} -> {out.name}",
                progress=progress,
                fail_fast=options.on_bad_image == "fail",
            )
            dataset = _SourceImages(samples, options, writer.bad_queue) if arrays is None else _ArrayImages(*arrays)
            writer.from_indexed_dataset(dataset, chunksize=int(options.chunk_size))
            bad = sorted(writer.bad)
            if bad and options.on_bad_image == "fail":
                reason = bad[0][2]
                raise DataError(f"{reason}; nothing written to '{out}' (on_bad_image=skip skips undecodable images)")
            seconds = time.perf_counter() - start
            size = beton.stat().st_size
            header, *_ = read_layout(beton)
            index = {
                "format": FORMAT,
                "split": split or split_dir.name,
                "source": str(split_dir.resolve()),
                "classes": list(classes),
                "num_samples": len(samples),
                "skipped": [i for i, _, _ in bad],
                "size_bytes": size,
                "structure_sha256": structure_digest(beton, header, size),
                "sha256": sha256_of(beton),
                "source_bytes": source_bytes,
                "write_seconds": round(seconds, 3),
                "write": options.stored(),
                "ffcv": _ffcv_version(),
            }
            # The class index goes last: a file without (or with a stale) index is refused at load time.
            with contextlib.suppress(FileNotFoundError):
                sidecar_path(out).unlink()
        if bad:
            atomic_write_text(skipped_path(out), "".join(f"{path}\t{reason}\n" for _, path, reason in bad))
        else:
            with contextlib.suppress(FileNotFoundError):
                skipped_path(out).unlink()
        atomic_write_text(sidecar_path(out), json.dumps(index, indent=1) + "\n")
    except WriteFailed as exc:
        kind, code, message = exc.args
        reason = message if code is not None else f"{kind}: {message}"  # OSError's text has its errno
        raise DataError(f"cannot write '{out}': {reason}; the partial file was removed") from None
    except OSError as exc:
        raise DataError(f"cannot write '{out}': {exc.strerror or exc}; the partial file was removed") from None
    return WriteResult(
        out=out,
        images=len(samples) - len(bad),
        skipped=[(path, reason) for _, path, reason in bad],
        seconds=seconds,
        size_bytes=size,
        source_bytes=source_bytes,
        page_size=int(options.page_size),
        workers=int(options.num_workers or os.cpu_count() or 1),
    )


def _ffcv_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ffcv")
    except PackageNotFoundError:
        return None
