"""Callbacks that Lightning does not ship: epoch-level throughput without per-step host syncs, and the
report of images skipped as undecodable."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn


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
