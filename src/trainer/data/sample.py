"""The bundled sample set: scikit-learn's handwritten digits written out in ImageNet layout.

`sklearn.datasets.load_digits()` ships 1,797 real 8x8 grey-level scans (pixel values 0..16, 10 classes) inside the
scikit-learn wheel, so a fresh machine with no data and no network can still run the whole pipeline end to end.
The set is written once as `root/{train,val}/<digit>/<index>.jpg`, the same layout as ImageNet, so it goes through
exactly the code path a real dataset does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.errors import ConfigError, DataError
from trainer.io import atomic_folder

MARKER = ".complete"
_SOURCE = "sklearn.datasets.load_digits"


def write_sample_set(root: str | os.PathLike, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write the digits sample set under `root` (once) and return `root`.

    Idempotent: a `root` holding a complete set written with the same parameters is returned untouched.
    Atomic: the set is written into a temporary sibling folder and renamed into place, so a killed write never
    leaves a half-written folder that looks complete.
    """
    root = Path(root)
    if size < 1:
        raise ConfigError(f"data.sample_size must be a positive image size, got {size}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"sample val_fraction must be between 0 and 1, got {val_fraction}")
    params = {"source": _SOURCE, "size": int(size), "val_fraction": float(val_fraction), "seed": int(seed)}
    if _is_complete(root, params):
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(
            f"'{root}' exists but is not a complete sample set (no {MARKER} marker); remove it or set another data.root"
        )

    try:
        _write_atomically(root, params)
    except OSError as exc:
        raise DataError(f"cannot write the sample set to '{root}': {exc}") from exc
    return root


def _write_atomically(root: Path, params: dict) -> None:
    try:
        with atomic_folder(root) as tmp:  # beside root, not in a system temp dir: the rename stays on one file system
            _write_images(tmp, params)
            (tmp / MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")
    except OSError:
        # Another process (e.g. a second DDP rank) finished first; its set is as good as ours.
        if not _is_complete(root, params):
            raise


def _is_complete(root: Path, params: dict) -> bool:
    """True if `root` holds a finished set with `params`; DataError if it holds one with other parameters."""
    marker = root / MARKER
    if not marker.is_file():
        return False
    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read sample-set marker '{marker}': {exc}") from exc
    if found != params:
        have = ", ".join(f"{k}={found.get(k)}" for k in ("size", "val_fraction", "seed"))
        want = ", ".join(f"{k}={params[k]}" for k in ("size", "val_fraction", "seed"))
        raise DataError(f"sample set '{root}' was written with {have}, not {want}; delete it or set another data.root")
    return True


def _write_images(out: Path, params: dict) -> None:
    # Imported here: scikit-learn is slow to import and only needed the one time the set is written.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    indices = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(
        indices, test_size=params["val_fraction"], stratify=digits.target, random_state=params["seed"]
    )
    size = params["size"]
    for split, split_idx in (("train", train_idx), ("val", val_idx)):
        for index in sorted(split_idx):
            label = str(digits.target[index])
            folder = out / split / label
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.round(digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
            image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
            # Zero-padded so that a sorted file listing is also in dataset-index order.
            image.convert("RGB").save(folder / f"{index:04d}.jpg", quality=95)
