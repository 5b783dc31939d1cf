"""What the folder and FFCV data modules share: the data config keys both read (conf/data/imagefolder.yaml, which
conf/data/ffcv.yaml extends), the global batch split over devices, the crop and normalisation keys, the training
augmentation, the progressive-resize hook, the loader's position in checkpoints (resume) and the evaluation loader
evaluate.py asks for.

Evaluation (the validation pipeline of the folder loader, and of the FFCV loader's other protocols): resize the
shorter side to floor(resolution / crop_ratio), then a centre crop of `resolution` (0.875 = the classic 224/256),
with timm's `create_transform`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from timm.data import create_transform
from torch.utils.data import DataLoader

from trainer.data.folder import ImageFolderDataset, SkipCounter
from trainer.data.sample import write_sample_set
from trainer.data.samplers import UnrepeatedDistributedSampler
from trainer.data.transforms import IMAGENET_AUGMENT
from trainer.errors import ConfigError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


class ImageDataModule(L.LightningDataModule):
    """The keys and logic of an image-classification data module over an ImageNet-layout folder `root` (the images
    themselves, or the folder FFCV files were written from); subclasses give `classes` and the loaders.

    `batch_size` is the global batch; each device gets `batch_size // world_size`. `num_classes` is the class
    count the caller expects (1000 for ImageNet). With `sample=True` the bundled digits sample set is written to
    `root` first. `resolution`, `crop_ratio`, `mean` and `std` may be left None here and filled in from the model's
    defaults before `setup()`. Training: `augment`, the augment group's config (conf/augment/, read by
    trainer.data.transforms; the data set's own defaults and a recipe's choice are settled when Hydra composes it);
    without one, ImageNet's crop and flip (`IMAGENET_AUGMENT`).
    """

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 256,
        num_workers: int = 4,
        resolution: int | None = None,
        crop_ratio: float | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        interpolation: str = "bilinear",
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
        self.root = "" if root is None else str(root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.resolution = resolution
        self.crop_ratio = crop_ratio
        self.mean = mean
        self.std = std
        self.interpolation = interpolation
        self.augment = dict(IMAGENET_AUGMENT if augment is None else augment)
        self.skip_bad_images = skip_bad_images
        self.expected_num_classes = num_classes
        self.sample = sample
        self.sample_size = sample_size
        self.train_split = train_split
        self.val_split = val_split
        self.drop_last = drop_last
        self.eval_split = val_split  # the split eval_dataloader() reads (prepare_eval)

        self._classes: list[str] | None = None
        # Progressive resizing (trainer.engine.ProgressiveResizing): epoch -> training resolution, set by the callback
        # and applied whenever a training loader is made (after a resume, the restored epoch's); None: `resolution`.
        self.train_resolution_schedule: Callable[[int], int] | None = None
        self._train_resolution: int | None = None
        self._iterator_epoch: int | None = None  # the epoch the training iterator in use was made for
        # Where a resumed run continues (load_state_dict): (epoch, batches of it already trained, global step).
        self._resume_at: tuple[int, int, int] | None = None
        # Undecodable images skipped, one counter for every split, shared with worker processes.
        self._skipped = SkipCounter()

    # -- data on disk ----------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        if self.sample:
            write_sample_set(self.root, size=self.sample_size)

    @property
    def classes(self) -> list[str]:
        """The sorted class names, checked against `num_classes`; the data is checked on first use."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Number of classes in the data (equal to the expected count when one was given)."""
        return len(self.classes)

    def bad_images_skipped(self) -> int:
        """Number of undecodable images skipped since the last call (then reset to zero)."""
        return self._skipped.pop()

    # -- batch size ------------------------------------------------------------------------------------------

    @property
    def world_size(self) -> int:
        trainer = self.trainer
        return int(trainer.world_size) if trainer is not None else 1

    @property
    def global_rank(self) -> int:
        trainer = self.trainer
        return int(trainer.global_rank) if trainer is not None else 0

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

    # -- crops and normalisation -----------------------------------------------------------------------------

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
        """The training augmentation (the `augment` config; a copy)."""
        return dict(self.augment)

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

    def setup(self, stage: str | None = None) -> None:
        self._check_transform_config()
        _ = self.per_device_batch_size  # fail on an indivisible batch before any indexing work
        _ = self.classes

    # -- training epochs: progressive resizing, resume -------------------------------------------------------

    @property
    def train_resolution(self) -> int:
        """The training crop size of the epoch being set up (progressive resizing changes it)."""
        return int(self._train_resolution or self.resolution)

    def set_train_resolution(self, resolution: int) -> None:
        """Train at `resolution` from the next training batch the loader makes on (call it between epochs);
        subclasses apply it to their pipelines."""
        if int(resolution) < 1:
            raise ConfigError(f"training resolution must be positive, got {resolution}")
        self._train_resolution = int(resolution)

    def _begin_train_epoch(self, epoch: int | None = None) -> int:
        """Called as each training epoch's iterator is made, before any of its batches: sets the resolution
        schedule's resolution for the trainer's current epoch (subclasses also seed the epoch's order there);
        returns how many of the epoch's batches this iterator skips (those a resumed run trained before it
        stopped; 0 otherwise)."""
        trainer = self.trainer
        epoch = int(trainer.current_epoch) if trainer is not None else epoch
        self._iterator_epoch = epoch
        if self.train_resolution_schedule is not None and epoch is not None:
            self.set_train_resolution(self.train_resolution_schedule(epoch))
        return self._resume_skip(epoch)

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

    # -- evaluation (evaluate.py) ----------------------------------------------------------------------------

    def _dataset(self, split: str, transform: Callable) -> ImageFolderDataset:
        """The images of `root/<split>` in the folder loader's order, through `transform`."""
        return ImageFolderDataset(
            f"{self.root}/{split}",
            self.classes,
            transform=transform,
            skip_bad_images=self.skip_bad_images,
            skip_counter=self._skipped,
        )

    def prepare_eval(self, split: str) -> None:
        """Get the data of `split` ready for eval_dataloader() (evaluate.py's eval.split): prepare_data()."""
        self.eval_split = split
        self.prepare_data()

    def eval_dataloader(
        self,
        transform: Callable | None = None,
        *,
        protocol: str = "center",
        device: torch.device | None = None,
        collate_fn: Callable | None = None,
    ) -> Iterable:
        """The split prepare_eval() chose, once, in order: through `transform` (a test-time protocol's views, batched
        by `collate_fn`), or with None through the data module's own validation pipeline (the centre crop). Under a
        trainer with several processes, this rank's strided share of it, unpadded, as validation reads it (exact
        distributed evaluation: every image once). `protocol` names the protocol in messages; `device` is where the
        batches go (default: the trainer's device; pinned memory for a CUDA device)."""
        dataset = self._dataset(self.eval_split, self.val_transform() if transform is None else transform)
        sampler = None
        if self.world_size > 1:
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=self.world_size, rank=self.global_rank, shuffle=False
            )
        if device is None and self.trainer is not None:
            device = self.trainer.strategy.root_device
        return DataLoader(
            dataset,
            batch_size=self.per_device_batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=device is not None and device.type == "cuda",
            collate_fn=collate_fn,
        )
