"""Callbacks that Lightning does not ship: epoch-level throughput without per-step host syncs, the report of
images skipped as undecodable, a drop-path rate that rises during training, and progressive resizing."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_warn

from trainer.errors import ConfigError
from trainer.models.regularization import drop_path_modules, set_drop_path_rate


class EpochThroughput(L.Callback):
    """Logs `train/images_per_sec`: the epoch's training images over the time from the epoch's start to its last
    training batch (validation, which Lightning runs before `on_train_epoch_end`, is excluded). For an epoch resumed
    in its middle: the images and the time of the part this run trained.

    Lightning's ThroughputMonitor measures every step and synchronises the device each time; an epoch-level
    figure needs neither, so the training step stays free of host syncs.
    """

    def __init__(self) -> None:
        self._start = self._last = 0.0
        self._images = 0
        self.history: list[float] = []

    def _begin(self) -> None:
        self._images = 0
        self._start = self._last = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning skips on_train_epoch_start for an epoch resumed in its middle: time that epoch's rest from here
        # (before the training iterator is made, as for any epoch); a fresh epoch starts its clock again below
        self._begin()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch is not None:
            self._images += len(batch[1])
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = self._last - self._start
        if elapsed <= 0 or self._images == 0:
            return
        # every rank processes its share: the global rate is the per-rank rate times the world size
        rate = self._images * trainer.world_size / elapsed
        self.history.append(rate)
        pl_module.log("train/images_per_sec", rate, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=True)


class BadImageReport(L.Callback):
    """With `data.skip_bad_images=true`, says at the end of each epoch how many undecodable images were skipped."""

    def __init__(self) -> None:
        self.total = 0

    def _report(self, trainer: L.Trainer) -> None:
        # one counter covers both loaders; validation ends inside the training epoch, so whichever hook runs
        # first after the skips reports them
        datamodule = trainer.datamodule
        counter = getattr(datamodule, "bad_images_skipped", None)
        skipped = counter() if counter else 0
        if skipped:
            self.total += skipped
            rank_zero_warn(
                f"skipped {skipped} undecodable image(s) in epoch {trainer.current_epoch} (data.skip_bad_images=true)"
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(trainer)


class ScheduledDropPath(L.Callback):
    """NASNet's ScheduledDropPath (Zoph et al., "Learning Transferable Architectures for Scalable Image
    Recognition", CVPR 2018, Sec. 4.1): the drop-path rate rises linearly with training progress,
    rate = final_rate x progress, progress = global_step / total optimizer steps, set at every training batch start.

    `final_rate=None` scales each block's rate as the model was built (`model.drop_path_rate` with timm's schedule,
    or the paper's rule with `model.drop_path_mode=batch`); a number sets the deepest block's rate and the others
    by the linear rule over depth (`set_drop_path_rate`). Works on timm's `DropPath` and on `BatchDropPath`.
    """

    def __init__(self, final_rate: float | None = None) -> None:
        if final_rate is not None and not 0.0 <= final_rate <= 1.0:
            raise ConfigError(f"ScheduledDropPath final_rate={final_rate} is not a rate in [0, 1]")
        self.final_rate = final_rate
        self.rate = 0.0  # the deepest block's current rate
        self._built_rates: list[float] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        modules = drop_path_modules(pl_module)
        if not modules:
            raise ConfigError(
                "ScheduledDropPath (callbacks=scheduled_drop_path): the model has no drop-path modules; "
                "build it with model.drop_path_rate > 0"
            )
        self._built_rates = [m.drop_prob for m in modules]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        total = max(float(trainer.estimated_stepping_batches), 1.0)
        progress = min(trainer.global_step / total, 1.0)
        if self.final_rate is not None:
            self.rate = self.final_rate * progress
            set_drop_path_rate(pl_module, self.rate)
            return
        if not self._built_rates:
            self.on_fit_start(trainer, pl_module)
        for module, built in zip(drop_path_modules(pl_module), self._built_rates, strict=True):
            module.drop_prob = built * progress
        self.rate = self._built_rates[-1] * progress


class ProgressiveResizing(L.Callback):
    """Progressive resizing, as FFCV's ResNet recipes do it (Leclerc et al., "FFCV: Accelerating Training by
    Removing Data Bottlenecks", CVPR 2023; ffcv-imagenet train_imagenet.py `get_resolution`): the training
    resolution is `min_res` up to epoch `start_epoch`, `max_res` from epoch `end_epoch` on, and in between the
    linear interpolation rounded to a multiple of `step` (32); epochs count from 0. FFCV's ResNet-50 configs ramp
    160 -> 192 over epochs 11-13 of 16 (17-20 of 24, 23-27 of 32, 29-34 of 40, 41-48 of 56, 65-76 of 88).

    The data module applies the schedule as it makes each epoch's training iterator, before any batch of the epoch
    (a resumed run's first epoch included): FFCV's decoder output size, or the folder loader's training transform
    (shared with its workers). Validation keeps `data.resolution`. Logs `train/resolution`.
    """

    def __init__(
        self, min_res: int = 160, max_res: int = 192, start_epoch: int = 11, end_epoch: int = 13, step: int = 32
    ) -> None:
        if not 0 < min_res <= max_res:
            raise ConfigError(f"ProgressiveResizing min_res={min_res}, max_res={max_res}: need 0 < min_res <= max_res")
        if not 0 <= start_epoch <= end_epoch:
            raise ConfigError(
                f"ProgressiveResizing start_epoch={start_epoch}, end_epoch={end_epoch}: need 0 <= start <= end"
            )
        if step < 1:
            raise ConfigError(f"ProgressiveResizing step={step} must be a positive number of pixels")
        self.min_res, self.max_res = int(min_res), int(max_res)
        self.start_epoch, self.end_epoch, self.step = int(start_epoch), int(end_epoch), int(step)

    def resolution(self, epoch: int) -> int:
        """The training resolution of `epoch` (FFCV's rule; kept within [min_res, max_res])."""
        if epoch <= self.start_epoch:
            return self.min_res
        if epoch >= self.end_epoch:
            return self.max_res
        interp = np.interp([epoch], [self.start_epoch, self.end_epoch], [self.min_res, self.max_res])[0]
        return int(min(max(int(np.round(interp / self.step)) * self.step, self.min_res), self.max_res))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "set_train_resolution"):
            raise ConfigError(
                "callbacks=progressive_resizing needs a data module that can change its training resolution "
                "(data=imagenet, imagefolder, sample, or their _ffcv forms)"
            )
        datamodule.train_resolution_schedule = self.resolution

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the size the data module set when it made this epoch's iterator
        resolution = float(trainer.datamodule.train_resolution)
        pl_module.log("train/resolution", resolution, on_step=False, on_epoch=True, rank_zero_only=True)


class EpochLength(L.Callback):
    """Once the training set is known: a global batch larger than the training set is named in a warning (every
    epoch is then one partial batch, or none with drop_last), and `log_every_n_steps` above the epoch's length is
    lowered to it, instead of Lightning's warning on every small data set (the bundled sample set) that step losses
    would go unlogged for the epoch."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        images = len(getattr(datamodule, "train_set", None) or []) if stage == "fit" else 0
        batch = getattr(datamodule, "batch_size", None)
        if not images or not batch:
            return
        if batch > images:
            rank_zero_warn(
                f"data.batch_size={batch} is larger than the training set ({images} images): each epoch is one "
                f"step of {images} images; lower data.batch_size",
            )
        steps = max(1, math.ceil(images / batch))
        limit = trainer.limit_train_batches
        steps = min(steps, int(limit)) if isinstance(limit, int) else max(1, int(steps * float(limit)))
        if steps < trainer.log_every_n_steps:
            trainer.log_every_n_steps = steps


class PercentProgressBar(RichProgressBar):
    """Lightning's rich progress bar with top-1/top-5 shown in percent, as the summary line and results.json give
    them (the logged metrics, metrics.csv, stay fractions)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return {key: percent(key, value) for key, value in super().get_metrics(trainer, pl_module).items()}


def percent(key: str, value: Any) -> Any:
    """`value` as '12.34%' where `key` is an accuracy (top1 / top5), else as it is."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if key.rsplit("/", 1)[-1].startswith(("top1", "top5")) and isinstance(value, (int, float)):
        return f"{100 * value:.2f}%"
    return value
