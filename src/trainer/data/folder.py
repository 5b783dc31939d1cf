"""ImageNet-layout image folders: layout validation and the dataset.

The layout is torchvision's ImageFolder one, as used by ImageNet (ILSVRC-2012) after the usual val re-sort:
`<root>/train/<class>/*.JPEG` and `<root>/val/<class>/*.JPEG`. The class index is the position of the class-folder
name in sorted order, and both splits share one class list, so a label means the same class in each.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from multiprocessing.context import get_spawning_popen
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import default_collate
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from trainer.errors import DataError

__all__ = [
    "IMG_EXTENSIONS",
    "ImageFolderDataset",
    "SharedInt",
    "SkipCounter",
    "collate_skipping_bad",
    "load_rgb",
    "validate_layout",
]


def validate_layout(root: str | os.PathLike, splits: Sequence[str] = ("train", "val")) -> list[str]:
    """Check that `root` is in ImageNet layout and return the sorted class-folder names shared by all `splits`.

    Raises a one-line DataError naming the offending path: `root` missing, a split missing or without class
    folders, a class folder without images, or splits whose class folders differ.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data.root '{root}' does not exist")
    if not root.is_dir():
        raise DataError(f"data.root '{root}' is not a directory")
    expected = "expected " + " and ".join(f"{root / split}/<class>/*.JPEG" for split in splits)

    split_classes: dict[str, list[str]] = {}
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"'{split_dir}' does not exist: data.root '{root}' is not in ImageNet layout, {expected}")
        classes = _class_folders(split_dir)
        if not classes:
            raise DataError(f"'{split_dir}' has no class folders: {expected}")
        split_classes[split] = classes

    first, *others = splits
    for split in others:
        missing = sorted(set(split_classes[first]) - set(split_classes[split]))
        extra = sorted(set(split_classes[split]) - set(split_classes[first]))
        if missing or extra:
            parts = [f"missing {_some(missing)}"] if missing else []
            parts += [f"extra {_some(extra)}"] if extra else []
            raise DataError(f"class folders of '{root / split}' differ from '{root / first}': {'; '.join(parts)}")

    for split in splits:
        for name in split_classes[split]:
            folder = root / split / name
            if not _has_image(folder):
                raise DataError(
                    f"class folder '{folder}' has no images (looked for {', '.join(IMG_EXTENSIONS)}, any case)"
                )
    return split_classes[first]


def _class_folders(split_dir: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .DS_Store-like junk) are never classes.
    with os.scandir(split_dir) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _has_image(folder: Path) -> bool:
    # Recursive like ImageFolder's indexing, but stops at the first image so 1,000 ImageNet classes stay cheap.
    with os.scandir(folder) as entries:
        subdirs = []
        for entry in entries:
            if entry.is_file() and entry.name.lower().endswith(IMG_EXTENSIONS):
                return True
            if entry.is_dir():
                subdirs.append(entry.path)
    return any(_has_image(Path(d)) for d in subdirs)


def _some(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def load_rgb(path: str) -> Image.Image:
    """Decode the image at `path` as RGB; a file PIL cannot decode raises a one-line DataError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"cannot decode image '{path}': {reason}") from exc


class SharedInt:
    """An integer shared with DataLoader worker processes.

    The value lives in shared memory, so changes made in the main process or in forked or spawned workers are seen
    by all of them. Pickled for anything other than starting a process (deepcopy, saving), it becomes an
    independent integer holding the current value, because shared memory cannot travel that way.
    """

    def __init__(self, value: int = 0) -> None:
        self._value = _shared_int(value)

    @property
    def value(self) -> int:
        return self._value.value

    @value.setter
    def value(self, value: int) -> None:
        self._value.value = int(value)

    def __getstate__(self) -> dict[str, Any]:
        if get_spawning_popen() is not None:
            return {"shared": self._value}
        return {"count": self._value.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._value = state["shared"] if "shared" in state else _shared_int(state["count"])


class SkipCounter(SharedInt):
    """A count of skipped images shared with DataLoader worker processes (see SharedInt)."""

    def add(self, n: int = 1) -> None:
        with self._value.get_lock():
            self._value.value += n

    def pop(self) -> int:
        """Return the count and reset it to zero."""
        with self._value.get_lock():
            count, self._value.value = self._value.value, 0
        return count


def _shared_int(count: int) -> Any:
    # A spawn-context lock also works in forked workers, while a fork-context one cannot be sent to spawned
    # workers (DataLoader(multiprocessing_context="spawn"), macOS, ddp_spawn).
    return multiprocessing.get_context("spawn").Value("q", count)


class ImageFolderDataset(ImageFolder):
    """torchvision's ImageFolder with a given class list, RGB decoding and optional skipping of bad images.

    `classes` fixes the label of every class folder (pass the same list for train and val). With
    `skip_bad_images`, an image that cannot be decoded yields None (drop it with `collate_skipping_bad`) and
    increments `skip_counter`; otherwise it raises DataError naming the file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        classes: Sequence[str],
        transform: Callable | None = None,
        skip_bad_images: bool = False,
        skip_counter: SkipCounter | None = None,
    ) -> None:
        self._given_classes = list(classes)
        self.skip_bad_images = skip_bad_images
        self.skip_counter = skip_counter if skip_counter is not None else SkipCounter()
        try:
            super().__init__(str(root), transform=transform, loader=load_rgb)
        except FileNotFoundError as exc:
            reason = " ".join(str(exc).split())
            raise DataError(f"cannot index images under '{root}': {reason}") from exc

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        # The class list is given rather than discovered, so train and val cannot disagree on labels.
        return self._given_classes, {name: index for index, name in enumerate(self._given_classes)}

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except DataError:
            if not self.skip_bad_images:
                raise
            self.skip_counter.add()
            return None
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


def collate_skipping_bad(batch: list[tuple[Any, int] | None]) -> Any:
    """default_collate without the skipped (None) samples; None if every sample in the batch was skipped."""
    kept = [sample for sample in batch if sample is not None]
    return default_collate(kept) if kept else None
