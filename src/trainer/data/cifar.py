"""CIFAR-10 / CIFAR-100 from the "python version" archives (Krizhevsky 2009, www.cs.toronto.edu/~kriz/cifar.html).

`data.root` holds the archive as downloaded (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`, read in place)
or its extracted folder (`cifar-10-batches-py/`, `cifar-100-python/`); `data.root` may also be the archive or the
folder itself. Each file is a pickled dict: `data`, a uint8 array of N x 3072 (the 1024 red, then green, then blue
values of a 32x32 image, row by row) and the labels (`labels`; CIFAR-100: `fine_labels` and `coarse_labels`); the
meta file names the classes (`label_names`; `fine_label_names`, `coarse_label_names`).

Splits: the 50,000 training images (CIFAR-10's five batches in order) and the 10,000 test images. Validation is the
test set, as most of the papers report; `val_split=5000` holds out the last 5,000 training images instead (He et
al. 2016, Sec. 4.2: "45k/5k train/val split"), and then the test set is not read at all.

Nothing is downloaded. A missing archive, or a damaged one (a truncated or unreadable file, an unpickling error, the
wrong shapes, labels out of range) is one DataError naming the file. The md5 sums of the real files (torchvision's
lists, `torchvision.datasets.CIFAR10` / `CIFAR100`) are checked only with `verify=True`: the tests write small
archives in the same format, which no md5 can match. Training and validation go through the folder data module's
machinery (ImageFolderDataModule: batch split, seeded samplers, the `augment` pipeline of trainer.data.transforms,
on PIL images); the CIFAR papers' augmentation is `augment=cifar` (4-px zero padding, random 32x32 crop, flip).
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from trainer.data.datamodule import ImageFolderDataModule
from trainer.errors import ConfigError, DataError

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
LABEL_TYPES = ("fine", "coarse")


@dataclass(frozen=True)
class CifarFormat:
    """One data set's archive: names of the archive, its folder, its files and their keys."""

    title: str
    archive: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: dict[str, str]  # label type -> key of the labels in a data file
    names_key: dict[str, str]  # label type -> key of the class names in the meta file
    num_classes: dict[str, int]  # label type -> number of classes (data.num_classes follows data.label_type)

    def md5s(self) -> dict[str, str]:
        """The real files' md5 sums, from torchvision (file name -> md5; the archive's under its own name)."""
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if self.title == "CIFAR-10" else CIFAR100
        sums = {name: md5 for name, md5 in (*cls.train_list, *cls.test_list)}
        return {**sums, cls.meta["filename"]: cls.meta["md5"], cls.filename: cls.tgz_md5}


FORMATS = {
    "cifar10": CifarFormat(
        "CIFAR-10",
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        {"fine": "labels"},
        {"fine": "label_names"},
        {"fine": 10},
    ),
    "cifar100": CifarFormat(
        "CIFAR-100",
        "cifar-100-python.tar.gz",
        "cifar-100-python",
        ("train",),
        ("test",),
        "meta",
        {"fine": "fine_labels", "coarse": "coarse_labels"},
        {"fine": "fine_label_names", "coarse": "coarse_label_names"},
        {"fine": 100, "coarse": 20},
    ),
}


def num_classes(dataset: str, label_type: str) -> int | None:
    """The class count of `dataset`'s `label_type` labels (the data configs' `${cifar_classes:...}`); None for a
    data set or label type CIFAR has not, which the data module then refuses with one line."""
    fmt = FORMATS.get(dataset)
    return fmt.num_classes.get(label_type) if fmt is not None else None


def _md5(data: bytes) -> str:
    import hashlib

    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class CifarArchive:
    """The files of one archive under `root`: the .tar.gz read in place, or the extracted folder."""

    def __init__(self, root: str | Path, dataset: str = "cifar10", verify: bool = False) -> None:
        if dataset not in FORMATS:
            raise ConfigError(f"data.dataset='{dataset}' is not one of {', '.join(FORMATS)}")
        self.format, self.verify = FORMATS[dataset], verify
        root, fmt = Path(root), FORMATS[dataset]
        candidates = [root / fmt.folder, root / fmt.archive, root]
        found = next((p for p in candidates if self._holds_files(p)), None)
        if found is None:
            raise DataError(
                f"{fmt.title} not found: expected '{root / fmt.archive}' or the folder '{root / fmt.folder}/' "
                f"(the python version, from {URL}; nothing is downloaded)"
            )
        self.path = found
        if verify and found.is_file():
            self._check_md5(found.name, found.read_bytes(), str(found))

    def _holds_files(self, path: Path) -> bool:
        if path.is_dir():
            return (path / self.format.meta_file).is_file() or (path / self.format.train_files[0]).is_file()
        return path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar"))

    def _check_md5(self, name: str, data: bytes, where: str) -> None:
        expected = self.format.md5s().get(name)
        if expected is not None and _md5(data) != expected:
            raise DataError(f"{self.format.title} file '{where}' fails its md5 check (data.verify=true): damaged?")

    def _read_bytes(self, name: str) -> tuple[bytes, str]:
        """(bytes of file `name`, the path to name in errors)."""
        if self.path.is_dir():
            where = str(self.path / name)
            try:
                return (self.path / name).read_bytes(), where
            except FileNotFoundError:
                raise DataError(f"{self.format.title} file '{where}' is missing") from None
            except OSError as exc:
                raise DataError(f"cannot read {self.format.title} file '{where}': {exc.strerror or exc}") from None
        member = f"{self.format.folder}/{name}"
        where = f"{self.path}:{member}"
        try:
            with tarfile.open(self.path) as tar:
                handle = tar.extractfile(member)
                if handle is None:
                    raise KeyError(member)
                return handle.read(), where
        except KeyError:
            raise DataError(f"{self.format.title} archive '{self.path}' has no '{member}'") from None
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            # a truncated .tar.gz fails here with EOFError / ReadError / zlib's error
            raise DataError(f"{self.format.title} archive '{self.path}' is damaged: {exc}") from None

    def read(self, name: str) -> dict[str, Any]:
        """The unpickled dict of file `name`, its keys as str (the files were pickled by Python 2)."""
        data, where = self._read_bytes(name)
        if self.verify and self.path.is_dir():
            self._check_md5(name, data, where)
        try:
            content = pickle.load(io.BytesIO(data), encoding="latin1")
        except Exception as exc:  # any unpickling failure: truncated, not a pickle, a missing class, ...
            raise DataError(f"{self.format.title} file '{where}' cannot be unpickled: {type(exc).__name__}") from None
        if not isinstance(content, dict):
            raise DataError(f"{self.format.title} file '{where}' holds a {type(content).__name__}, not a dict")
        return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in content.items()}

    def class_names(self, label_type: str = "fine") -> list[str]:
        meta = self.read(self.format.meta_file)
        key = self.format.names_key[label_type]
        names = meta.get(key)
        if not isinstance(names, (list, tuple)) or not names:
            raise DataError(f"{self.format.title} meta file '{self._where(self.format.meta_file)}' has no {key} list")
        return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]

    def _where(self, name: str) -> str:
        return str(self.path / name) if self.path.is_dir() else f"{self.path}:{self.format.folder}/{name}"

    def images(self, files: Sequence[str], label_type: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """(N x 32 x 32 x 3 uint8 images, N int64 labels) of `files`, in order."""
        key = self.format.label_key[label_type]
        images, labels = [], []
        for name in files:
            content = self.read(name)
            where = self._where(name)
            data, file_labels = content.get("data"), content.get(key)
            if data is None or file_labels is None:
                raise DataError(f"{self.format.title} file '{where}' has no 'data' or '{key}' entry")
            data, file_labels = np.asarray(data), np.asarray(file_labels)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise DataError(
                    f"{self.format.title} file '{where}': data is {data.dtype} {data.shape}, not uint8 N x 3072"
                )
            if file_labels.shape != (len(data),):
                raise DataError(f"{self.format.title} file '{where}': {len(file_labels)} labels for {len(data)} images")
            if len(file_labels) and (file_labels.min() < 0 or file_labels.max() >= num_classes):
                raise DataError(f"{self.format.title} file '{where}': labels outside 0..{num_classes - 1}")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(file_labels.astype(np.int64))
        return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


class CifarImages(Dataset):
    """(PIL image, label) pairs over uint8 arrays, with an optional transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index])
        return (self.transform(image) if self.transform is not None else image), int(self.labels[index])


def load_split(
    root: str | Path, dataset: str, split: str, label_type: str = "fine", val_split: int = 0, verify: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images, labels, class names) of `split` (train | val) as the data module reads them (the FFCV writer too)."""
    archive = CifarArchive(root, dataset, verify)
    fmt = archive.format
    if label_type not in fmt.label_key:
        raise ConfigError(f"data.label_type='{label_type}' is not one of {', '.join(fmt.label_key)} for {fmt.title}")
    classes = archive.class_names(label_type)
    if split == "train" or (val_split and split == "val"):
        images, labels = archive.images(fmt.train_files, label_type, len(classes))
        if not 0 <= val_split < len(labels):
            raise ConfigError(f"data.val_split={val_split} leaves no training image of the {len(labels)}")
        cut = len(labels) - val_split
        part = slice(0, cut) if split == "train" else slice(cut, None)  # the last val_split images are held out
        return images[part], labels[part], classes
    if split != "val":
        raise ConfigError(f"split='{split}' is not one of train, val")
    images, labels = archive.images(fmt.test_files, label_type, len(classes))
    return images, labels, classes


class CifarDataModule(ImageFolderDataModule):
    """CIFAR-10 / CIFAR-100 (`dataset`) from the python-version archive under `root`; every other key as
    ImageFolderDataModule's. `label_type`: CIFAR-100's `fine` (100 classes) or `coarse` (20 superclasses) labels.
    `val_split`: 0 validates on the test set; n > 0 on the last n training images (and trains on the others).
    `verify`: check the real files' md5 sums."""

    def __init__(
        self,
        root: str,
        dataset: str = "cifar10",
        label_type: str = "fine",
        val_split: int = 0,
        verify: bool = False,
        **kwargs: Any,
    ) -> None:
        if dataset not in FORMATS:
            raise ConfigError(f"data.dataset='{dataset}' is not one of {', '.join(FORMATS)}")
        if label_type not in FORMATS[dataset].label_key:
            raise ConfigError(
                f"data.label_type='{label_type}' is not one of {', '.join(FORMATS[dataset].label_key)} "
                f"for {FORMATS[dataset].title}"
            )
        if isinstance(val_split, bool) or int(val_split) != val_split or val_split < 0:
            raise ConfigError(f"data.val_split={val_split} is not a number of training images >= 0")
        super().__init__(root=root, **kwargs)
        self.dataset, self.label_type, self.val_size, self.verify = dataset, label_type, int(val_split), verify
        # the folder module's split names only label what is read (and its Lightning logs)
        self.train_split, self.val_split = "train", "val" if self.val_size else "test"
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def prepare_data(self) -> None:
        pass  # nothing to download or write

    @cached_property
    def archive(self) -> CifarArchive:
        return CifarArchive(self.root, self.dataset, self.verify)

    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            classes = self.archive.class_names(self.label_type)
            expected = self.expected_num_classes
            if expected is not None and len(classes) != expected:
                raise DataError(
                    f"{self.archive.format.title} under '{self.root}' names {len(classes)} "
                    f"{self.label_type} classes but data.num_classes={expected}"
                )
            self._classes = classes
        return self._classes

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of `split` (train | val), read once."""
        if split not in self._arrays:
            images, labels, _ = load_split(self.root, self.dataset, split, self.label_type, self.val_size, self.verify)
            self._arrays[split] = (images, labels)
        return self._arrays[split]

    def _dataset(self, split: str, transform: Any) -> CifarImages:  # type: ignore[override]
        images, labels = self.arrays("train" if split == self.train_split else "val")
        _ = self.classes  # labels were range-checked against the class count on reading
        return CifarImages(images, labels, transform)
