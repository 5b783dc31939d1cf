"""LightningDataModule for ImageNet-layout folders, with the standard ImageNet augmentation.

Training: the augment group's pipeline (`augment`, trainer.data.transforms), by default RandomResizedCrop (scale
0.08-1, aspect 3/4-4/3, Szegedy et al. 2015, "Going deeper with convolutions", Sec. 6) + horizontal flip +
normalisation; a data set may choose other defaults (the digits sample set: augment=digits) and a recipe its
paper's. Evaluation: resize the shorter side to floor(resolution / crop_ratio), then a centre crop of
`resolution` (0.875 = the classic 224/256), with timm's `create_transform`. The keys and logic shared with the FFCV
data module (batch split, crops and normalisation, progressive resizing, resume) are trainer.data.base's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.data.base import ImageDataModule
from trainer.data.folder import ImageFolderDataset, SharedInt, collate_skipping_bad, validate_layout
from trainer.data.samplers import SeededDataset, SeededDistributedSampler, UnrepeatedDistributedSampler
from trainer.data.transforms import build_train_transform
from trainer.errors import DataError


class EpochAwareDataLoader(DataLoader):
    """A DataLoader that calls `before_epoch()` as each epoch's iterator is made, before its workers prefetch any
    batch (the training resolution of progressive resizing is set there)."""

    def __init__(self, *args: Any, before_epoch: Callable[[], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.before_epoch = before_epoch

    def __iter__(self) -> Any:
        if self.before_epoch is not None:
            self.before_epoch()
        return super().__iter__()


def _train_transform_at(resolution: int, **kwargs: Any) -> Callable:
    return build_train_transform(resolution=int(resolution), **kwargs)


class ResolutionAwareTransform:
    """The training transform at a resolution that may change between epochs (progressive resizing).

    The resolution is a SharedInt, so DataLoader workers, persistent ones included, build and use the transform for
    the resolution the main process set last; each process builds each resolution's pipeline once.
    """

    def __init__(self, build: Callable[[int], Callable], resolution: int) -> None:
        self._build = build
        self.resolution = SharedInt(resolution)
        self._built: dict[int, Callable] = {}

    def current(self) -> Callable:
        resolution = self.resolution.value
        if resolution not in self._built:
            self._built[resolution] = self._build(resolution)
        return self._built[resolution]

    @property
    def transforms(self) -> list[Callable]:
        return self.current().transforms

    def __call__(self, image: Any) -> Any:
        return self.current()(image)

    def __repr__(self) -> str:
        return f"ResolutionAwareTransform(resolution={self.resolution.value}, {self.current()!r})"


class ImageFolderDataModule(ImageDataModule):
    """Train/val loaders over `root/<train_split>/<class>/*` and `root/<val_split>/<class>/*`; the shared keys are
    trainer.data.base.ImageDataModule's.

    The folders must hold exactly `num_classes` classes where it is given. `pin_memory` and `persistent_workers`
    are the DataLoaders'.
    """

    def __init__(self, root: str, pin_memory: bool = True, persistent_workers: bool = True, **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.train_set: ImageFolderDataset | None = None
        self.val_set: ImageFolderDataset | None = None
        self._train_sampler: SeededDistributedSampler | None = None

    @property
    def classes(self) -> list[str]:
        """Sorted class-folder names; validates the layout (and writes the sample set if asked) on first use."""
        if self._classes is None:
            # Callers need the class count to build the model before Lightning runs prepare_data();
            # writing the sample set is idempotent and safe to race, so do it here too.
            self.prepare_data()
            classes = validate_layout(self.root, (self.train_split, self.val_split))
            expected = self.expected_num_classes
            if expected is not None and len(classes) != expected:
                raise DataError(
                    f"data.root '{self.root}' holds {len(classes)} class folders but data.num_classes={expected}"
                )
            self._classes = classes
        return self._classes

    # -- datasets --------------------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if stage in (None, "fit") and self.train_set is None:
            build = partial(
                _train_transform_at,
                augment=self.train_augment(),
                mean=tuple(self.mean),
                std=tuple(self.std),
                interpolation=self.interpolation,
            )
            transform = ResolutionAwareTransform(build, self.train_resolution)
            self.train_set = self._dataset(self.train_split, transform)
        if self.val_set is None:
            self.val_set = self._dataset(self.val_split, self.val_transform())

    def set_train_resolution(self, resolution: int) -> None:
        super().set_train_resolution(resolution)
        transform = self.train_set.transform if self.train_set is not None else None
        if isinstance(transform, ResolutionAwareTransform):
            transform.resolution.value = self._train_resolution

    def _begin_train_epoch(self, epoch: int | None = None) -> int:
        skip = super()._begin_train_epoch(epoch)
        epoch = self._iterator_epoch
        if self._train_sampler is not None and epoch is not None:
            # Lightning sets the sampler's epoch only after the first iterator of a (resumed) fit is made
            self._train_sampler.set_epoch(epoch)
            self._train_sampler.skip_next(skip * self.per_device_batch_size)
        return skip

    # -- loaders ---------------------------------------------------------------------------------------------

    def _loader(
        self,
        dataset: Dataset,
        sampler: Sampler | None,
        drop_last: bool,
        shuffle: bool = False,
        before_epoch: Callable[[], None] | None = None,
    ) -> DataLoader:
        loader = EpochAwareDataLoader if before_epoch is not None else DataLoader
        extra = {"before_epoch": before_epoch} if before_epoch is not None else {}
        return loader(
            dataset,
            batch_size=self.per_device_batch_size,
            sampler=sampler,
            shuffle=shuffle if sampler is None else None,
            drop_last=drop_last,
            num_workers=self.num_workers,
            # Pinning without a GPU only earns a warning from torch.
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate_skipping_bad,
            **extra,
        )

    def train_sampler(self) -> SeededDistributedSampler:
        """This rank's share of the epoch's shuffled order, with a per-sample augmentation seed (data/samplers.py):
        the same batches for a given seed whatever the worker count. The seed is Lightning's (`seed_everything`)."""
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        self._train_sampler = SeededDistributedSampler(
            self.train_set, num_replicas=self.world_size, rank=self.global_rank, shuffle=True, seed=seed
        )
        return self._train_sampler

    def val_sampler(self) -> Sampler | None:
        """Under several processes, each rank's strided share of the val set, unpadded (exact distributed
        evaluation: no sample counted twice, none dropped); one process reads it in order."""
        if self.world_size == 1:
            return None
        return UnrepeatedDistributedSampler(
            self.val_set, num_replicas=self.world_size, rank=self.global_rank, shuffle=False
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        # Each device sees ceil(n / world_size) samples; dropping the only, partial batch would leave nothing.
        per_device_samples = math.ceil(len(self.train_set) / self.world_size)
        drop_last = self.drop_last and per_device_samples >= self.per_device_batch_size
        return self._loader(
            SeededDataset(self.train_set),
            self.train_sampler(),
            drop_last=drop_last,
            before_epoch=self._begin_train_epoch,
        )

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self.val_set, self.val_sampler(), drop_last=False)
