"""The last-checkpoint callback: Lightning's ModelCheckpoint at each epoch's end, plus step checkpoints in the
middle of an epoch every `every_n_steps` optimizer steps and/or every `every_n_minutes` minutes of training
(`checkpoint.*` in conf/train.yaml). ModelCheckpoint takes only one of epochs, steps or a time interval; this keeps
the epoch ends (what resume=auto and the sample set rely on) and adds the others. Writes are atomic
(trainer/io.py); a step checkpoint holds the loader's position, so a resumed run continues at the next
batch (data/base.py)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from trainer.compat import save_checkpoint_now, should_skip_checkpoint
from trainer.errors import ConfigError


class LastCheckpoint(ModelCheckpoint):
    def __init__(self, *args: Any, every_n_steps: int | None = None, every_n_minutes: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if every_n_steps is not None and int(every_n_steps) < 1:
            raise ConfigError(f"checkpoint.every_n_steps={every_n_steps} must be a positive number of steps")
        if every_n_minutes is not None and float(every_n_minutes) <= 0:
            raise ConfigError(f"checkpoint.every_n_minutes={every_n_minutes} must be a positive number of minutes")
        self.every_n_steps = int(every_n_steps) if every_n_steps else None
        self.every_n_minutes = float(every_n_minutes) if every_n_minutes else None
        self._last_step_save = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_step_save = time.monotonic()

    def _step_due(self, trainer: L.Trainer) -> bool:
        due = bool(self.every_n_steps and trainer.global_step % self.every_n_steps == 0)
        if self.every_n_minutes is not None:
            late = time.monotonic() - self._last_step_save >= 60 * self.every_n_minutes
            due = due or bool(trainer.strategy.broadcast(late))  # rank 0's clock decides for every rank
        return due

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)  # no-op: no step trigger of Lightning's
        if (self.every_n_steps is None and self.every_n_minutes is None) or not self._step_due(trainer):
            return
        if should_skip_checkpoint(self, trainer):
            return
        self.save_now(trainer)

    def save_now(self, trainer: L.Trainer) -> None:
        """Write step=<n>.ckpt and point last.ckpt at it, now (also used on Ctrl-C: engine/interrupt.py)."""
        save_checkpoint_now(self, trainer)
        self._last_step_save = time.monotonic()
