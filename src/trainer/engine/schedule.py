"""Learning-rate schedules through timm's scheduler factory, stepping per epoch or per optimizer step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

from trainer.errors import ConfigError

INTERVALS = ("epoch", "step")


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
    min_lr: float = 0.0,
    warmup_epochs: float = 0,
    warmup_lr: float = 0.0,
) -> Scheduler:
    """A timm scheduler. With `interval='step'` the lr changes every optimizer step, so epoch-valued settings
    (decay_epochs, milestones, warm-up) may be fractional; with 'epoch' it changes at epoch boundaries."""
    if interval not in INTERVALS:
        raise ConfigError(f"sched.interval='{interval}' is not one of {', '.join(INTERVALS)}")
    # `milestones` are the epochs from which the lower lr applies (torch's MultiStepLR, and the papers' "at epochs
    # 30 and 60"). timm's multistep compares milestones against t + 1 (one index early), so shift by one index.
    index = 1 if interval == "epoch" else 1 / updates_per_epoch
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=sched,
        num_epochs=num_epochs,
        decay_epochs=decay_epochs,
        decay_milestones=[m + index for m in milestones],
        decay_rate=decay_rate,
        min_lr=min_lr,
        warmup_lr=warmup_lr,
        warmup_epochs=warmup_epochs,
        step_on_epochs=interval == "epoch",
        updates_per_epoch=updates_per_epoch,
    )
    if scheduler is None:
        raise ConfigError(f"unknown scheduler sched.sched='{sched}'")
    return scheduler
