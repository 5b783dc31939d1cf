"""FFCV .beton files: writing a split of an ImageNet-layout folder, the class index kept beside it, and the checks
that run before ffcv reads a file.

A .beton (ffcv's format) holds two fields per sample, `image` (ffcv's RGBImageField) and `label` (IntField). The
samples are in the folder loader's index order (ImageFolder's: sorted class folders, then sorted file names), and the
labels are the folder loader's: the position of the class folder in sorted order. Beside `<name>.beton` the writer
keeps `<name>.beton.json`, the class index (the sorted class names) with what the file must look like (size,
sample count, a digest of its header and index tables, how it was written); loading checks the file against it, so
a truncated or corrupt file, or one written with another class mapping, is a one-line error instead of a crash
inside numba. `<name>.beton.skipped.txt` lists the source images that could not be decoded.

Nothing here imports ffcv at module level: `require_ffcv()` says in one line what to install where it is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import queue
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import ConfigError, DataError

__all__ = [
    "BetonInfo",
    "WriteOptions",
    "WriteResult",
    "check_beton",
    "ensure_beton",
    "require_ffcv",
    "sidecar_path",
    "skipped_path",
    "write_beton",
    "write_from_config",
]

FORMAT = "trainer.ffcv/1"
WRITE_MODES = ("raw", "jpg", "proportion", "smart")
MAX_SIDES = ("longer", "shorter")
BAD_IMAGE_POLICIES = ("skip", "fail")
FIELDS = {"image": 2, "label": 1}  # field name -> ffcv type id (RGBImageField, IntField), in file order
MIN_PAGE_SIZE = 1 << 21  # ffcv's smallest page, 2 MiB
DEBIAN_PACKAGES = "pkg-config libturbojpeg0-dev libopencv-dev"
INSTALL_HINT = (
    f"install the Debian packages ({DEBIAN_PACKAGES}: sudo apt-get install {DEBIAN_PACKAGES}), then "
    "pip install -e '.[ffcv]' (bash scripts/setup.sh does both)"
)

# ffcv 1.0.2's file layout (ffcv/types.py): header, field descriptors, per-sample metadata, data pages, and the
# allocation table at the end. Repeated here so a file can be checked before ffcv (and numba) touch it.
_HEADER = np.dtype(
    [
        ("version", "<u2"),
        ("num_fields", "<u2"),
        ("page_size", "<u4"),
        ("num_samples", "<u8"),
        ("alloc_table_ptr", "<u8"),
    ],
    align=True,
)
_FIELD_DESC = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True)
_ALLOC = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
_IMAGE_META = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
_METADATA = np.dtype([("f0", _IMAGE_META), ("f1", "<i8")], align=True)
_VERSION = 2


def require_ffcv(what: str = "the FFCV data path") -> None:
    """Import ffcv, or fail with one line saying what to install (the system libraries it links to, then the
    `ffcv` extra)."""
    import torch

    threads = torch.get_num_threads()
    try:
        import ffcv
        import ffcv.loader  # noqa: F401
    except Exception as exc:  # ImportError, or OSError from a missing libturbojpeg / OpenCV shared library
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{what} needs ffcv, which cannot be imported ({reason}); {INSTALL_HINT}") from None
    finally:
        # Importing ffcv sets torch's intra-op threads to 1 for the whole process (its compiler module does so at
        # import), which would train on one core; trainer.data.ffcv_ops keeps ffcv from changing them later.
        torch.set_num_threads(threads)


def sidecar_path(beton: str | os.PathLike) -> Path:
    """The class index kept beside a .beton: `<file>.json`."""
    beton = Path(beton)
    return beton.with_name(beton.name + ".json")


def skipped_path(beton: str | os.PathLike) -> Path:
    """The list of source images that could not be decoded: `<file>.skipped.txt`."""
    beton = Path(beton)
    return beton.with_name(beton.name + ".skipped.txt")


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


# -- the class index beside the file ---------------------------------------------------------------------------


@dataclass
class BetonInfo:
    """The class index of a .beton (its `<file>.json`), checked against the file."""

    path: Path
    classes: list[str]
    num_samples: int  # samples in the file, placeholders of skipped images included
    skipped: list[int] = field(default_factory=list)  # indices holding a placeholder (undecodable source image)
    split: str | None = None
    source: str | None = None
    write: dict[str, Any] = field(default_factory=dict)
    size_bytes: int = 0
    source_bytes: int | None = None
    write_seconds: float | None = None

    @property
    def num_images(self) -> int:
        return self.num_samples - len(self.skipped)

    def indices(self) -> np.ndarray | None:
        """The samples a loader should read: all but the skipped ones (None: all)."""
        if not self.skipped:
            return None
        keep = np.ones(self.num_samples, dtype=bool)
        keep[np.asarray(self.skipped, dtype=np.int64)] = False
        return np.flatnonzero(keep).astype(np.uint64)


def _structure_digest(path: Path, header: np.void, size: int) -> str:
    """sha256 of the header, field descriptors, per-sample metadata and allocation table (not the image data)."""
    metadata_end = _HEADER.itemsize + _FIELD_DESC.itemsize * int(header["num_fields"])
    metadata_end += _METADATA.itemsize * int(header["num_samples"])
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(metadata_end))
        f.seek(int(header["alloc_table_ptr"]))
        digest.update(f.read(size - int(header["alloc_table_ptr"])))
    return digest.hexdigest()


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a whole file, read in blocks (the .beton index's digest; evaluate.py's checkpoint digest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_layout(path: Path) -> tuple[np.void, np.ndarray, np.ndarray, np.ndarray]:
    """Header, field descriptors, metadata and allocation table; ValueError describing the first inconsistency."""
    size = path.stat().st_size
    if size < _HEADER.itemsize:
        raise ValueError(f"{size} bytes, shorter than a .beton header")
    header = np.fromfile(path, dtype=_HEADER, count=1)[0]
    if int(header["version"]) != _VERSION:
        raise ValueError(f"format version {int(header['version'])}, not ffcv's {_VERSION}")
    num_fields, num_samples = int(header["num_fields"]), int(header["num_samples"])
    if num_fields != len(FIELDS):
        raise ValueError(f"{num_fields} fields, not {len(FIELDS)} (image, label)")
    meta_start = _HEADER.itemsize + _FIELD_DESC.itemsize * num_fields
    table = int(header["alloc_table_ptr"])
    if not meta_start + _METADATA.itemsize * num_samples <= table <= size:
        raise ValueError(f"its index points past the end of the file ({table} of {size} bytes)")
    if (size - table) % _ALLOC.itemsize:
        raise ValueError("its allocation table is cut short")
    fields = np.fromfile(path, dtype=_FIELD_DESC, count=num_fields, offset=_HEADER.itemsize)
    for desc, (name, type_id) in zip(fields, FIELDS.items(), strict=True):
        found = bytes(desc["name"]).rstrip(b"\0").decode("ascii", "replace")
        if found != name or int(desc["type_id"]) != type_id:
            raise ValueError(f"field '{found}' (type {int(desc['type_id'])}) where '{name}' (type {type_id}) belongs")
    metadata = np.fromfile(path, dtype=_METADATA, count=num_samples, offset=meta_start)
    allocs = np.fromfile(path, dtype=_ALLOC, offset=table)
    if len(metadata) != num_samples:
        raise ValueError("its per-sample index is cut short")
    if len(allocs) and (
        int((allocs["ptr"] + allocs["size"]).max()) > table or int(allocs["sample_id"].max()) >= num_samples
    ):
        raise ValueError("its allocation table points outside the data region")
    return header, fields, metadata, allocs


def check_beton(
    path: str | os.PathLike, *, verify: bool = False, expected_classes: Sequence[str] | None = None
) -> BetonInfo:
    """Check `path` and its class index before ffcv reads it; a one-line DataError naming the file otherwise.

    Checks: the file and its `<file>.json` exist; the file has the size, sample count and header/index digest
    recorded at writing (a truncated, cut or overwritten file fails here); ffcv's layout is intact (version, the
    image and label fields, every allocation inside the file); every sample that is not a skipped placeholder has
    its image. `verify=True` also compares the sha256 of the whole file (reads it all). `expected_classes`: the
    class mapping the data config implies; a different one is an error.
    """
    path = Path(path)
    sidecar = sidecar_path(path)
    hint = "write it with scripts/write_ffcv.py (docs/data.md)"
    if not path.is_file():
        raise DataError(f".beton '{path}' does not exist; {hint}")
    if not sidecar.is_file():
        raise DataError(f".beton '{path}' has no class index '{sidecar.name}' beside it; rewrite it: {hint}")
    try:
        index = json.loads(sidecar.read_text())
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} class index")
        classes = [str(c) for c in index["classes"]]
        num_samples, size_bytes = int(index["num_samples"]), int(index["size_bytes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read the class index '{sidecar}' of '{path}': {exc}") from None
    size = path.stat().st_size
    if size != size_bytes:
        raise DataError(
            f".beton '{path}' is truncated or was changed after writing: {size} bytes, its class index says "
            f"{size_bytes}; rewrite it: {hint}"
        )
    try:
        header, _, metadata, allocs = _read_layout(path)
        if int(header["num_samples"]) != num_samples:
            raise ValueError(f"{int(header['num_samples'])} samples, its class index says {num_samples}")
        if _structure_digest(path, header, size) != index.get("structure_sha256"):
            raise ValueError("its header or index tables differ from what was written")
        skipped = sorted(int(i) for i in index.get("skipped", []))
        placeholder = np.zeros(num_samples, dtype=bool)
        placeholder[skipped] = True
        labels = metadata["f1"]
        good = labels[~placeholder]
        if len(good) and (good.min() < 0 or good.max() >= len(classes)):
            raise ValueError(f"labels outside 0..{len(classes) - 1}")
        has_data = np.zeros(num_samples, dtype=bool)
        has_data[allocs["sample_id"].astype(np.int64)] = True
        missing = np.flatnonzero(~has_data & ~placeholder)
        if len(missing):
            raise ValueError(f"sample {int(missing[0])} has no image data ({len(missing)} such samples)")
        if verify and sha256_of(path) != index.get("sha256"):
            raise ValueError("its content differs from what was written (sha256)")
    except (OSError, ValueError, IndexError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f".beton '{path}' is corrupt ({reason}); rewrite it: {hint}") from None
    info = BetonInfo(
        path=path,
        classes=classes,
        num_samples=num_samples,
        skipped=skipped,
        split=index.get("split"),
        source=index.get("source"),
        write=dict(index.get("write") or {}),
        size_bytes=size_bytes,
        source_bytes=index.get("source_bytes"),
        write_seconds=index.get("write_seconds"),
    )
    if expected_classes is not None:
        check_class_mapping(info, expected_classes, "the data config")
    return info


def check_class_mapping(info: BetonInfo, classes: Sequence[str], what: str) -> None:
    """One line when `info` was written with another class mapping than `classes` (named `what`)."""
    classes = list(classes)
    if info.classes == classes:
        return
    if len(info.classes) != len(classes):
        detail = f"{len(info.classes)} classes, {what} has {len(classes)}"
    else:
        first = next(i for i, (a, b) in enumerate(zip(info.classes, classes, strict=True)) if a != b)
        detail = f"label {first} is '{info.classes[first]}' there but '{classes[first]}' in {what}"
    raise DataError(
        f".beton '{info.path}' was written with a different class mapping than {what}: {detail}; rewrite it with "
        f"scripts/write_ffcv.py from the same folders"
    )


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


def _guarded(errors: Any, work: Callable, *args: Any) -> None:
    """Run one of ffcv's writer jobs; an exception is reported on `errors` (ffcv's own loop would wait forever)."""
    try:
        work(*args)
    except BaseException as exc:  # OSError (out of disk), MemoryError, anything: the parent reports it
        errors.put((type(exc).__name__, getattr(exc, "errno", None), " ".join(str(exc).split())))
        os._exit(1)


class _WriteFailed(Exception):
    pass


def _writer_class() -> type:
    """ffcv's DatasetWriter with a loop that notices failing workers and undecodable images (defined lazily:
    ffcv is imported only when writing)."""
    import multiprocessing as mp

    from ffcv.memory_allocator import MemoryAllocator
    from ffcv.writer import DatasetWriter
    from tqdm import tqdm

    class Writer(DatasetWriter):
        def __init__(self, *args: Any, desc: str, progress: bool, fail_fast: bool, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.desc, self.progress, self.fail_fast = desc, progress, fail_fast
            self.bad_queue = mp.SimpleQueue()
            self.bad: list[tuple[int, str, str]] = []

        def _drain_bad(self) -> None:
            while not self.bad_queue.empty():
                self.bad.append(self.bad_queue.get())

        def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):  # ffcv's, made robust
            self.num_samples = num_samples
            self.prepare()
            processes: list[Any] = []
            try:
                work = mp.Queue()
                for todo in queue_content:
                    work.put(todo)
                for _ in range(self.num_workers):
                    work.put(None)
                allocations_queue = mp.Queue()
                done = mp.Value(ctypes.c_uint64, 0)
                allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
                errors = mp.SimpleQueue()
                args = (work, self.metadata_sm, self.metadata_type, self.fields, allocator, done, allocations_queue)
                processes = [
                    mp.Process(target=_guarded, args=(errors, work_fn, *args, *extra_worker_args), daemon=True)
                    for _ in range(self.num_workers)
                ]
                for p in processes:
                    p.start()
                allocations: list[Any] = []
                finished = 0
                with tqdm(total=num_samples, desc=self.desc, unit=" images", disable=not self.progress) as bar:
                    while finished < len(processes):
                        self._drain_bad()
                        if not errors.empty():
                            raise _WriteFailed(*errors.get())
                        if self.fail_fast and self.bad:
                            return
                        with contextlib.suppress(queue.Empty):
                            while True:
                                allocations.extend(allocations_queue.get(timeout=0.05))
                                finished += 1
                        bar.update(int(done.value) - bar.n)
                        dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                        if dead and errors.empty() and finished < len(processes):
                            time.sleep(0.2)  # an error report may still be on its way
                            if errors.empty():
                                raise _WriteFailed("WorkerDied", None, f"a writer process exited with code {dead[0]}")
                for p in processes:
                    p.join()
                self._drain_bad()
                self.finalize(allocations)
            finally:
                for p in processes:
                    if p.is_alive():
                        p.terminate()
                        p.join()
                self.metadata_sm.close()
                self.metadata_sm.unlink()

    return Writer


def _source_samples(split_dir: Path, classes: Sequence[str]) -> list[tuple[str, int]]:
    from trainer.data.folder import ImageFolderDataset

    return list(ImageFolderDataset(split_dir, classes).samples)


@contextlib.contextmanager
def _partial_files(out: Path) -> Iterator[dict[str, Path]]:
    """Temporary siblings of the output files; whatever is left of them is removed on the way out."""
    tag = f"partial-{os.getpid()}-{time.monotonic_ns()}"
    paths = {
        "beton": out.with_name(f".{out.name}.{tag}"),
        "index": out.with_name(f".{sidecar_path(out).name}.{tag}"),
        "skipped": out.with_name(f".{skipped_path(out).name}.{tag}"),
    }
    try:
        yield paths
    finally:
        for path in paths.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


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
    Writer = _writer_class()
    start = time.perf_counter()
    with _partial_files(out) as partial:
        writer = Writer(
            str(partial["beton"]),
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
        try:
            writer.from_indexed_dataset(dataset, chunksize=int(options.chunk_size))
            bad = sorted(writer.bad)
            if bad and options.on_bad_image == "fail":
                reason = bad[0][2]
                raise DataError(f"{reason}; nothing written to '{out}' (on_bad_image=skip skips undecodable images)")
            seconds = time.perf_counter() - start
            beton = partial["beton"]
            size = beton.stat().st_size
            header, *_ = _read_layout(beton)
            index = {
                "format": FORMAT,
                "split": split or split_dir.name,
                "source": str(split_dir.resolve()),
                "classes": list(classes),
                "num_samples": len(samples),
                "skipped": [i for i, _, _ in bad],
                "size_bytes": size,
                "structure_sha256": _structure_digest(beton, header, size),
                "sha256": sha256_of(beton),
                "source_bytes": source_bytes,
                "write_seconds": round(seconds, 3),
                "write": options.stored(),
                "ffcv": _ffcv_version(),
            }
            partial["index"].write_text(json.dumps(index, indent=1) + "\n")
            if bad:
                partial["skipped"].write_text("".join(f"{path}\t{reason}\n" for _, path, reason in bad))
            # The class index goes last: a file without (or with a stale) index is refused at load time.
            with contextlib.suppress(FileNotFoundError):
                sidecar_path(out).unlink()
            os.replace(beton, out)
            if bad:
                os.replace(partial["skipped"], skipped_path(out))
            else:
                with contextlib.suppress(FileNotFoundError):
                    skipped_path(out).unlink()
            os.replace(partial["index"], sidecar_path(out))
        except _WriteFailed as exc:
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
