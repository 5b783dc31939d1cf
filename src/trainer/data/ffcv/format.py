"""The .beton file as this project writes it, and the checks that run before ffcv reads one.

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

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import ConfigError, DataError
from trainer.io import sha256_of

__all__ = [
    "BetonInfo",
    "check_beton",
    "check_class_mapping",
    "read_layout",
    "require_ffcv",
    "sidecar_path",
    "skipped_path",
    "structure_digest",
]

FORMAT = "trainer.ffcv/1"
FIELDS = {"image": 2, "label": 1}  # field name -> ffcv type id (RGBImageField, IntField), in file order
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

    from trainer.compat import cache_ffcv_jit_helpers

    threads = torch.get_num_threads()
    try:
        cache_ffcv_jit_helpers()  # imports ffcv (numba is part of the ffcv extra)
        import ffcv
        import ffcv.loader  # noqa: F401
    except Exception as exc:  # ImportError, or OSError from a missing libturbojpeg / OpenCV shared library
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{what} needs ffcv, which cannot be imported ({reason}); {INSTALL_HINT}") from None
    finally:
        # Importing ffcv sets torch's intra-op threads to 1 for the whole process (its compiler module does so at
        # import), which would train on one core; trainer.data.ffcv.loader keeps ffcv from changing them later.
        torch.set_num_threads(threads)


def sidecar_path(beton: str | os.PathLike) -> Path:
    """The class index kept beside a .beton: `<file>.json`."""
    beton = Path(beton)
    return beton.with_name(beton.name + ".json")


def skipped_path(beton: str | os.PathLike) -> Path:
    """The list of source images that could not be decoded: `<file>.skipped.txt`."""
    beton = Path(beton)
    return beton.with_name(beton.name + ".skipped.txt")


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


def structure_digest(path: Path, header: np.void, size: int) -> str:
    """sha256 of the header, field descriptors, per-sample metadata and allocation table (not the image data)."""
    metadata_end = _HEADER.itemsize + _FIELD_DESC.itemsize * int(header["num_fields"])
    metadata_end += _METADATA.itemsize * int(header["num_samples"])
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(metadata_end))
        f.seek(int(header["alloc_table_ptr"]))
        digest.update(f.read(size - int(header["alloc_table_ptr"])))
    return digest.hexdigest()


def read_layout(path: Path) -> tuple[np.void, np.ndarray, np.ndarray, np.ndarray]:
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
        header, _, metadata, allocs = read_layout(path)
        if int(header["num_samples"]) != num_samples:
            raise ValueError(f"{int(header['num_samples'])} samples, its class index says {num_samples}")
        if structure_digest(path, header, size) != index.get("structure_sha256"):
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
