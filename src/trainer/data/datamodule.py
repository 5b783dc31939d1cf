"""LightningDataModule for ImageNet-layout folders, with the standard ImageNet augmentation.

Training: the recipe's augmentation (`augment`, trainer.data.transforms), by default RandomResizedCrop (scale
0.08-1, aspect 3/4-4/3, Szegedy et al. 2015, "Going deeper with convolutions", Sec. 6) + horizontal flip +
normalisation; the data set's own crop range and flip (`train_scale`, `train_ratio`, `hflip`) apply where the
recipe sets none. Evaluation: resize the shorter side to floor(resolution / crop_ratio), then a centre crop of
`resolution` (0.875 = the classic 224/256), with timm's `create_transform`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.data.folder import ImageFolderDataset, SharedInt, SkipCounter, collate_skipping_bad, validate_layout
from trainer.data.sample import write_sample_set
from trainer.data.samplers import SeededDataset, SeededDistributedSampler, UnrepeatedDistributedSampler
from trainer.data.transforms import build_train_transform
from trainer.errors import ConfigError, DataError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


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


class ImageFolderDataModule(L.LightningDataModule):
    """Train/val loaders over `root/<train_split>/<class>/*` and `root/<val_split>/<class>/*`.

    `batch_size` is the global batch; each device gets `batch_size // world_size`. `num_classes` is the class
    count the caller expects (1000 for ImageNet); the folders must hold exactly that many. With `sample=True`
    the bundled digits sample set is written to `root` first. `resolution`, `crop_ratio`, `mean` and `std` may be
    left None here and filled in from the model's defaults before `setup()`.
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 256,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        resolution: int | None = None,
        crop_ratio: float | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        interpolation: str = "bilinear",
        train_scale: Sequence[float] = (0.08, 1.0),
        train_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        augment: Mapping[str, Any] | None = None,
        skip_bad_images: bool = False,
        num_classes: int | None = None,
        sample: bool = False,
        sample_size: int = 32,
        train_split: str = "train",
        val_split: str = "val",
        drop_last: bool = True,
        step_checkpoint_minutes: float | None = None,
    ) -> None:
        super().__init__()
        # read by conf/train.yaml (checkpoint.every_n_minutes): the data set's step-checkpoint interval
        self.step_checkpoint_minutes = step_checkpoint_minutes
        # No save_hyperparameters(): Lightning refuses to log when model and datamodule hparams share a key
        # (num_classes) with different values, and the run config is recorded by Hydra anyway.
        self.root = str(root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.resolution = resolution
        self.crop_ratio = crop_ratio
        self.mean = mean
        self.std = std
        self.interpolation = interpolation
        self.train_scale = tuple(train_scale)
        self.train_ratio = tuple(train_ratio)
        self.hflip = hflip
        self.augment = dict(augment or {})
        self.skip_bad_images = skip_bad_images
        self.expected_num_classes = num_classes
        self.sample = sample
        self.sample_size = sample_size
        self.train_split = train_split
        self.val_split = val_split
        self.drop_last = drop_last

        self.train_set: ImageFolderDataset | None = None
        self.val_set: ImageFolderDataset | None = None
        self._classes: list[str] | None = None
        # Progressive resizing (trainer.engine.ProgressiveResizing): epoch -> training resolution, set by the callback
        # and applied whenever a training loader is made (after a resume, the restored epoch's); None: `resolution`.
        self.train_resolution_schedule: Callable[[int], int] | None = None
        self._train_resolution: int | None = None
        self._iterator_epoch: int | None = None  # the epoch the training iterator in use was made for
        # Where a resumed run continues (load_state_dict): (epoch, batches of it already trained, global step).
        self._resume_at: tuple[int, int, int] | None = None
        self._train_sampler: SeededDistributedSampler | None = None
        # One counter for both splits, shared with worker processes.
        self._skipped = SkipCounter()

    # -- data on disk ----------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        if self.sample:
            write_sample_set(self.root, size=self.sample_size)

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

    @property
    def num_classes(self) -> int:
        """Number of classes in the data (equal to the expected count when one was given)."""
        return len(self.classes)

    # -- batch size ------------------------------------------------------------------------------------------

    @property
    def world_size(self) -> int:
        trainer = self.trainer
        return int(trainer.world_size) if trainer is not None else 1

    @property
    def per_device_batch_size(self) -> int:
        world_size = self.world_size
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be positive, got {self.batch_size}")
        if self.batch_size % world_size:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is not divisible by the {world_size} devices; "
                f"use a multiple of {world_size} (it is the global batch, split evenly across devices)"
            )
        return self.batch_size // world_size

    # -- transforms and datasets -----------------------------------------------------------------------------

    def _check_transform_config(self) -> None:
        for key in ("resolution", "crop_ratio", "mean", "std"):
            if getattr(self, key) is None:
                raise ConfigError(f"data.{key} is not set (it defaults to the model's pretrained config)")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"data.interpolation='{self.interpolation}' is not one of {', '.join(INTERPOLATIONS)}")
        if self.crop_ratio <= 0:
            raise ConfigError(f"data.crop_ratio must be positive, got {self.crop_ratio}")
        for key in ("mean", "std"):
            if len(getattr(self, key)) != 3:
                raise ConfigError(f"data.{key} must have 3 values (RGB), got {list(getattr(self, key))}")

    def train_augment(self) -> dict[str, Any]:
        """The recipe's augmentation (`augment`), with the data set's crop range and flip where it gives none."""
        merged: dict[str, Any] = {
            "crop": "random_resized",
            "scale": self.train_scale,
            "ratio": self.train_ratio,
            "hflip": self.hflip,
        }
        merged.update({k: v for k, v in self.augment.items() if v is not None})
        return merged

    def train_transform(self, resolution: int | None = None) -> Callable:
        """The training pipeline at `resolution` (default `resolution`); the recipes' pixel sizes scale with it."""
        self._check_transform_config()
        return build_train_transform(
            self.train_augment(),
            resolution=int(resolution or self.resolution),
            mean=tuple(self.mean),
            std=tuple(self.std),
            interpolation=self.interpolation,
        )

    @property
    def train_resolution(self) -> int:
        """The training crop size of the epoch being set up (progressive resizing changes it)."""
        return int(self._train_resolution or self.resolution)

    def set_train_resolution(self, resolution: int) -> None:
        """Train at `resolution` from the next training batch the loader makes on (call it between epochs)."""
        if int(resolution) < 1:
            raise ConfigError(f"training resolution must be positive, got {resolution}")
        self._train_resolution = int(resolution)
        transform = self.train_set.transform if self.train_set is not None else None
        if isinstance(transform, ResolutionAwareTransform):
            transform.resolution.value = self._train_resolution

    def _begin_train_epoch(self, epoch: int | None = None) -> int:
        """Called as each training epoch's iterator is made, before any of its batches: sets the sampler's epoch
        and the resolution schedule for the trainer's current epoch; returns how many of the epoch's batches this
        iterator skips (those a resumed run trained before it stopped; 0 otherwise)."""
        trainer = self.trainer
        epoch = int(trainer.current_epoch) if trainer is not None else epoch
        self._iterator_epoch = epoch
        if self.train_resolution_schedule is not None and epoch is not None:
            self.set_train_resolution(self.train_resolution_schedule(epoch))
        skip = self._resume_skip(epoch)
        if self._train_sampler is not None and epoch is not None:
            # Lightning sets the sampler's epoch only after the first iterator of a (resumed) fit is made
            self._train_sampler.set_epoch(epoch)
            self._train_sampler.skip_next(skip * self.per_device_batch_size)
        return skip

    def _resume_skip(self, epoch: int | None) -> int:
        """The batches of `epoch` a resumed run already trained (once: the next iterators start at 0)."""
        if self._resume_at is None or epoch is None or self._resume_at[0] != epoch:
            return 0
        _, batches, step = self._resume_at
        self._resume_at = None
        rank_zero_info(
            f"resuming at epoch {epoch}, step {step}: the first {batches} batch(es) of epoch {epoch}, trained before "
            "the interruption, are skipped (not read)"
        )
        return batches

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position, saved in every checkpoint: the epoch, the batches of it trained so far
        (this rank's) and the step. The order and the augmentation follow from (seed, epoch) (data/samplers.py)."""
        trainer = self.trainer
        if trainer is None:
            return {}
        batches = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        return {
            "epoch": int(trainer.current_epoch),
            "batches": batches,
            "global_step": int(trainer.global_step),
            "seed": int(os.environ.get("PL_GLOBAL_SEED", 0)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and "epoch" in state:
            self._resume_at = (int(state["epoch"]), int(state["batches"]), int(state.get("global_step", 0)))

    def train_iterator_is_stale(self) -> bool:
        """Whether the training iterator in use was made for another epoch than the trainer's. Lightning makes a
        resumed run's first iterator before it restores the epoch (to count the steps); the order, the
        augmentation seeds, the resolution and the batches to skip follow the epoch, so
        ClassificationModule.on_train_start then asks for a fresh one."""
        trainer, made_for = self.trainer, self._iterator_epoch
        return trainer is not None and made_for is not None and made_for != trainer.current_epoch

    def val_transform(self) -> Callable:
        self._check_transform_config()
        return create_transform(
            input_size=int(self.resolution),
            is_training=False,
            crop_pct=float(self.crop_ratio),
            interpolation=self.interpolation,
            mean=tuple(self.mean),
            std=tuple(self.std),
        )

    def _dataset(self, split: str, transform: Callable) -> ImageFolderDataset:
        return ImageFolderDataset(
            f"{self.root}/{split}",
            self.classes,
            transform=transform,
            skip_bad_images=self.skip_bad_images,
            skip_counter=self._skipped,
        )

    def setup(self, stage: str | None = None) -> None:
        self._check_transform_config()
        _ = self.per_device_batch_size  # fail on an indivisible batch before any indexing work
        if stage in (None, "fit") and self.train_set is None:
            self._check_transform_config()
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

    # -- loaders ---------------------------------------------------------------------------------------------

    @property
    def global_rank(self) -> int:
        trainer = self.trainer
        return int(trainer.global_rank) if trainer is not None else 0

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

    def bad_images_skipped(self) -> int:
        """Number of undecodable images skipped since the last call (then reset to zero)."""
        return self._skipped.pop()
