"""Learning-rate schedules through timm's scheduler factory, stepping per epoch or per optimizer step.

The papers' schedules, by name:
- `step`: lr x decay_rate every decay_epochs (fractional with interval=step: Inception's 0.94 every 2 epochs,
  EfficientNet's and NASNet's 0.97 every 2.4); `exponential` is the same schedule under the papers' name;
- `multistep`: lr x decay_rate at each milestone epoch (ResNet's 30/60, DenseNet's, WRN's 60/120/160);
- `poly`: lr (1 - t/T)^power (SqueezeNet power 0.5, Darknet power 4); `linear` is poly with power 1 (ShuffleNet);
- `cosine`, `constant`;
- `plateau`: lr x decay_rate when the monitored validation metric stops improving for `patience_epochs` (the
  faithful form of "divide by 10 when the validation error stops improving": AlexNet, VGG, ResNet).
A linear warm-up goes in front of any of them (`warmup_epochs`); with `warmup_prefix` the schedule starts after it
(peak lr at the end of the warm-up, as FFCV's linear ramp), without it the warm-up overlays the schedule's first
epochs (TensorFlow's Inception/EfficientNet code).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from timm.scheduler import PlateauLRScheduler, create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

from trainer.errors import ConfigError

INTERVALS = ("epoch", "step")
SCHEDULES = ("cosine", "step", "exponential", "multistep", "poly", "linear", "plateau", "constant")
_TIMM_NAME = {"exponential": "step", "linear": "poly"}


class PlateauScheduler(PlateauLRScheduler):
    """timm's plateau scheduler (torch's ReduceLROnPlateau behind timm's warm-up), with all of its state in
    checkpoints: timm saves only the best metric, so a resumed run would restart the patience and cooldown
    counters. Here the whole ReduceLROnPlateau state (best, bad epochs, cooldown, last epoch) is saved."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings():  # timm deprecates it for the missing checkpoint state, which this adds
            warnings.simplefilter("ignore", FutureWarning)
            super().__init__(*args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return {"plateau": self.lr_scheduler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "plateau" in state_dict:
            self.lr_scheduler.load_state_dict(state_dict["plateau"])
        else:  # timm's own format
            super().load_state_dict(state_dict)


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    num_epochs: int,
    updates_per_epoch: int,
    sched: str = "cosine",
    interval: str = "epoch",
    decay_epochs: float | None = None,
    milestones: Sequence[int] = (30, 60),
    decay_rate: float = 0.1,
    power: float = 1.0,
    min_lr: float = 0.0,
    warmup_epochs: float = 0,
    warmup_lr: float = 0.0,
    warmup_prefix: bool = False,
    patience_epochs: int = 10,
    monitor: str = "val/top1",
) -> Scheduler:
    """A timm scheduler. With `interval='step'` the lr changes every optimizer step, so epoch-valued settings
    (decay_epochs, milestones, warm-up) may be fractional; with 'epoch' it changes at epoch boundaries.
    `monitor` (plateau only) is read by the LightningModule; its mode follows the name (loss: min, else max)."""
    if interval not in INTERVALS:
        raise ConfigError(f"sched.interval='{interval}' is not one of {', '.join(INTERVALS)}")
    if sched not in SCHEDULES:
        raise ConfigError(f"unknown scheduler sched.sched='{sched}'; one of {', '.join(SCHEDULES)}")
    if sched == "plateau" and interval != "epoch":
        raise ConfigError("sched.sched=plateau steps on validation results: it needs sched.interval=epoch")
    if sched in ("step", "exponential") and not decay_epochs:
        raise ConfigError(f"sched.sched={sched} needs sched.decay_epochs > 0")
    if warmup_prefix and warmup_epochs >= num_epochs:
        raise ConfigError(f"sched.warmup_epochs={warmup_epochs} leaves no epochs of the {num_epochs} to schedule")
    if sched == "linear":
        power = 1.0
    # `milestones` are the epochs from which the lower lr applies (torch's MultiStepLR, and the papers' "at epochs
    # 30 and 60"). timm's multistep compares milestones against t + 1 (one index early), so shift by one index.
    if sched == "plateau":
        scheduler = PlateauScheduler(
            optimizer,
            decay_rate=decay_rate,
            patience_t=patience_epochs,
            warmup_t=warmup_epochs,
            warmup_lr_init=warmup_lr,
            lr_min=min_lr,
            mode="min" if "loss" in monitor else "max",
        )
        scheduler.monitor = monitor
        return scheduler
    index = 1 if interval == "epoch" else 1 / updates_per_epoch
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=_TIMM_NAME.get(sched, sched),
        # with a warm-up prefix timm adds the warm-up to the schedule's length: keep the total at num_epochs
        num_epochs=num_epochs - warmup_epochs if warmup_prefix else num_epochs,
        decay_epochs=decay_epochs,
        decay_milestones=[m + index for m in milestones],
        decay_rate=power if sched in ("poly", "linear") else decay_rate,  # timm's poly reads its power there
        min_lr=min_lr,
        warmup_lr=warmup_lr,
        warmup_epochs=warmup_epochs,
        warmup_prefix=warmup_prefix,
        step_on_epochs=interval == "epoch",
        updates_per_epoch=updates_per_epoch,
    )
    scheduler.monitor = None
    return scheduler
