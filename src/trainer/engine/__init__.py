"""Training machinery: the LightningModule, optimizers, schedules, callbacks and checkpoint I/O."""

from trainer.engine.callbacks import (
    BadImageReport,
    EpochLength,
    EpochThroughput,
    ProgressiveResizing,
    ScheduledDropPath,
)
from trainer.engine.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from trainer.engine.module import ClassificationModule, split_outputs
from trainer.engine.optim import create_optimizer, param_groups, scale_lr
from trainer.engine.schedule import create_scheduler

__all__ = [
    "AtomicCheckpointIO",
    "BadImageReport",
    "ClassificationModule",
    "EpochLength",
    "EpochThroughput",
    "ProgressiveResizing",
    "ScheduledDropPath",
    "atomic_torch_save",
    "create_optimizer",
    "create_scheduler",
    "param_groups",
    "scale_lr",
    "split_outputs",
]
