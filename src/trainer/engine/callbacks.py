"""Callbacks that Lightning does not ship: epoch-level throughput without per-step host syncs, the report of
images skipped as undecodable, and a drop-path rate that rises during training."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from trainer.errors import ConfigError
from trainer.models.regularization import drop_path_modules, set_drop_path_rate


class EpochThroughput(L.Callback):
    """Logs `train/images_per_sec`: the epoch's training images over the time from the epoch's start to its last
    training batch (validation, which Lightning runs before `on_train_epoch_end`, is excluded).

    Lightning's ThroughputMonitor measures every step and synchronises the device each time; an epoch-level
    figure needs neither, so the training step stays free of host syncs.
    """

    def __init__(self) -> None:
        self._start = self._last = 0.0
        self._images = 0
        self.history: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._images = 0
        self._start = self._last = time.perf_counter()

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
