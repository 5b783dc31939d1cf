"""The LightningModule: any classification backbone, an optimizer partial and a scheduler partial."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torchmetrics import Metric

from trainer.compat import data_fetcher, logger_connector, should_accumulate
from trainer.engine import metrics
from trainer.errors import CheckpointError, ConfigError, NonFiniteLossError

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
SchedulerFactory = Callable[..., Scheduler]
NONFINITE_MODES = ("stop", "skip")
NONFINITE_MAX_IN_A_ROW = 10  # loss.nonfinite=skip: the run stops after this many skipped steps in a row
NO_STEP = 2**62  # loss.nonfinite=stop: the device-side "first non-finite step" while there is none


def rng_states() -> dict[str, Any]:
    """torch's, numpy's, Python's (and CUDA's) generator states, as types a weights-only checkpoint load accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def split_outputs(outputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits and auxiliary logits: a model in training mode may return (main, aux1, ...)."""
    if isinstance(outputs, torch.Tensor):
        return outputs, []
    main, *aux = outputs
    return main, list(aux)


class ClassificationModule(L.LightningModule):
    """Cross-entropy with label smoothing plus weighted auxiliary losses; top-1/top-5 on train and val.

    With `ema_decay`, an exponential moving average of the weights (and buffers) is kept after every optimizer step
    (timm's ModelEmaV3: ema = decay * ema + (1 - decay) * w, starting from the first step's weights): the
    Inception/Xception papers' Polyak averaging and EfficientNet's EMA (0.9999). It is checkpointed with the raw
    weights (`ema.module.*`), and validation reports both: `val/top1` (raw) and `val_ema/top1` (averaged).

    A non-finite loss (`nonfinite`): `stop` ends the run with one line naming the first non-finite step (the step,
    its epoch and batch, the loss, the lr). The check waits for the device only where the run does anyway: the
    first non-finite step is recorded on the device, and read at the next logging step, checkpoint, epoch end or
    training end, whichever comes first; a checkpoint is never written after it, so the last checkpoint written is
    the last good state. `skip` skips the step's update, counts it (`nonfinite_skipped`, kept in checkpoints) and
    stops after NONFINITE_MAX_IN_A_ROW in a row; it costs one host sync per step (the loss must be known before the
    update).

    Checkpoints carry the random generators' states (torch, numpy, Python, CUDA), restored when training resumes,
    so that anything drawing from them after a resume (dropout, drop-path) draws what it would have drawn.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        *,
        num_classes: int,
        label_smoothing: float = 0.0,
        aux_weights: Sequence[float] = (),
        sched_interval: str = "epoch",
        channels_last: bool = False,
        config: dict[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        ema_decay: float | None = None,
        ema_warmup: bool = False,
        nonfinite: str = "stop",
    ) -> None:
        super().__init__()
        if nonfinite not in NONFINITE_MODES:
            raise ConfigError(f"loss.nonfinite='{nonfinite}' is not one of {', '.join(NONFINITE_MODES)}")
        self.nonfinite = nonfinite
        self.nonfinite_skipped = 0  # steps skipped for a non-finite loss, over the whole run
        self._nonfinite_in_a_row = 0
        self._first_nonfinite: torch.Tensor | None = None  # stop: the first non-finite step, on the device
        self._nonfinite_loss: torch.Tensor | None = None  # stop: its loss
        self._unchecked_steps: dict[int, tuple[int, int, float]] = {}  # stop: step -> (epoch, batch, lr), unread
        self._rng_to_restore: dict[str, Any] | None = None
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.aux_weights = [float(w) for w in aux_weights]
        self.sched_interval = sched_interval
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.config = config or {}
        self.class_names = list(class_names) if class_names is not None else None
        self.train_metrics = metrics.accuracy(num_classes).clone(prefix="train/")  # the epoch's so far
        self.val_metrics = metrics.accuracy(num_classes).clone(prefix="val/")
        # a sum of per-sample losses and a count, summed over ranks: exact under DDP's unequal val shares
        self.val_loss = metrics.mean()
        self.ema: ModelEmaV3 | None = None
        if ema_decay is not None:
            if not 0.0 < ema_decay < 1.0:
                raise ConfigError(f"ema.decay={ema_decay} is not in (0, 1)")
            self.ema = ModelEmaV3(model, decay=ema_decay, use_warmup=ema_warmup)
            self.ema.requires_grad_(False)  # not trained: DDP and the optimizer must not see it
            self.ema.train()  # follows the module's mode like any submodule; validation runs it in eval mode
            self.val_ema_metrics = metrics.accuracy(num_classes).clone(prefix="val_ema/")
        # the mean loss of the steps since the last logged step (this process's), and of the epoch so far
        self.train_loss_window = metrics.mean(sync_on_compute=False)
        self.train_loss_epoch = metrics.mean()
        self._pbar_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor | Sequence[torch.Tensor]:
        return self.model(x)

    def _aux_weights_for(self, n: int) -> list[float]:
        if n == len(self.aux_weights):
            return self.aux_weights
        if len(self.aux_weights) == 1:  # one weight for every head
            return self.aux_weights * n
        raise ConfigError(
            f"the model returns {n} auxiliary outputs but loss.aux_weights has "
            f"{len(self.aux_weights)} entries {self.aux_weights}"
        )

    def loss(self, outputs: torch.Tensor | Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        logits, aux = split_outputs(outputs)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        for weight, aux_logits in zip(self._aux_weights_for(len(aux)), aux, strict=True):
            loss = loss + weight * F.cross_entropy(aux_logits, targets, label_smoothing=self.label_smoothing)
        return loss

    def on_train_start(self) -> None:
        # a resumed run continues its metrics files from the checkpoint's step: drop rows logged after it
        if self.trainer.ckpt_path and self.trainer.is_global_zero:
            for logger in self.trainer.loggers:
                if hasattr(logger, "truncate_after"):
                    logger.truncate_after(self.trainer.global_step)
        # Lightning made the first training iterator before restoring the checkpoint's epoch (to count steps for the
        # schedule); where the data depends on the epoch (FFCV's order, progressive resizing), make it again now.
        stale = getattr(self.trainer.datamodule, "train_iterator_is_stale", None)
        fetcher = data_fetcher(self.trainer)
        if stale is not None and fetcher is not None and stale():
            iter(fetcher)
        if self._rng_to_restore is not None:  # last: making the iterator may draw (worker seeds)
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    def training_step(self, batch: Sequence[torch.Tensor] | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every image of the batch was undecodable and skipped (data.skip_bad_images)
            return None
        images, targets = batch[0].contiguous(memory_format=self.memory_format), batch[1]
        outputs = self.model(images)
        loss = self.loss(outputs, targets)
        if self.nonfinite == "stop":
            self._note_nonfinite(loss.detach())
        elif not self._loss_is_finite(loss):
            return None  # loss.nonfinite=skip: no backward, no update
        self.train_metrics.update(split_outputs(outputs)[0].detach(), targets)
        self._log_train_loss(loss.detach(), len(targets))
        return loss

    def _step_and_lr(self) -> tuple[int, int, int, float]:
        """The step this batch makes (steps count from 1), its epoch and batch (from 1), and the lr."""
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else float("nan")
        batch = self.trainer.fit_loop.epoch_loop.batch_idx + 1
        return self.trainer.global_step + 1, self.current_epoch, batch, lr

    def _note_nonfinite(self, loss: torch.Tensor) -> None:
        """loss.nonfinite=stop, without waiting for the device: record the first non-finite step on it."""
        step, epoch, batch, lr = self._step_and_lr()
        if self._first_nonfinite is None or self._first_nonfinite.device != loss.device:
            self._first_nonfinite = torch.full((), NO_STEP, dtype=torch.long, device=loss.device)
            self._nonfinite_loss = torch.full((), float("nan"), device=loss.device)
        first = ~torch.isfinite(loss) & (self._first_nonfinite == NO_STEP)
        self._first_nonfinite = torch.where(first, step, self._first_nonfinite)
        self._nonfinite_loss = torch.where(first, loss.float(), self._nonfinite_loss)
        self._unchecked_steps[step] = (epoch, batch, lr)

    def _check_nonfinite(self) -> None:
        """loss.nonfinite=stop: raise for the first non-finite step recorded since the last check (a host sync; on
        every rank together under DDP: at logging steps, checkpoints, epoch ends and the end of training)."""
        if self.nonfinite != "stop" or self._first_nonfinite is None:
            return
        first = self._first_nonfinite
        if self.trainer.world_size > 1:  # the earliest over the ranks: every rank stops together
            first = self.trainer.strategy.reduce(first.clone(), reduce_op="min")
        step = int(first)
        unchecked, self._unchecked_steps = self._unchecked_steps, {}
        if step == NO_STEP:
            return
        epoch, batch, lr = unchecked.get(step, (self.current_epoch, 0, float("nan")))
        raise NonFiniteLossError(
            f"the training loss is {float(self._nonfinite_loss)} at step {step} (epoch {epoch}, batch {batch}), "
            f"lr {lr:.6g}: stopped after {self.trainer.global_step} steps (loss.nonfinite=stop), no checkpoint written "
            "after it; the last checkpoint is the last good state (resume=auto continues from it)"
        )

    def _loss_is_finite(self, loss: torch.Tensor) -> bool:
        """loss.nonfinite=skip: whether to make this step's update (a host sync: the decision precedes it)."""
        finite = bool(torch.isfinite(loss.detach()))
        if self.trainer.world_size > 1:  # every rank skips together, or DDP's all-reduce would hang
            finite = bool(self.trainer.strategy.reduce_boolean_decision(finite, all=True))
        if finite:
            self._nonfinite_in_a_row = 0
            return True
        step, epoch, batch, lr = self._step_and_lr()
        where = f"step {step} (epoch {epoch}, batch {batch})"
        self.nonfinite_skipped += 1
        self._nonfinite_in_a_row += 1
        if self._nonfinite_in_a_row >= NONFINITE_MAX_IN_A_ROW:
            raise NonFiniteLossError(
                f"the training loss is non-finite for {self._nonfinite_in_a_row} steps in a row, the last at {where} "
                f"(loss {float(loss.detach())}, lr {lr:.6g}): stopped (loss.nonfinite=skip)"
            )
        return False

    def _epoch_metrics(self) -> dict[str, Metric]:
        """The running metrics of the epoch in progress: checkpointed, so that a run resumed in the middle of an
        epoch logs the epoch's figures the uninterrupted run logs."""
        return {
            **self.train_metrics,  # train/top1, train/top5
            "train/loss_epoch": self.train_loss_epoch,
            "loss_window": self.train_loss_window,
        }

    def on_train_epoch_start(self) -> None:
        # not called for an epoch resumed in its middle (Lightning), whose metrics come from the checkpoint
        for metric in self._epoch_metrics().values():
            metric.reset()

    def on_train_epoch_end(self) -> None:
        self._check_nonfinite()
        if self.train_loss_epoch.update_count:  # computed over every process (an exact, weighted mean)
            self.log_dict(self.train_metrics.compute(), on_step=False, on_epoch=True)
            self.log("train/loss_epoch", self.train_loss_epoch.compute(), on_step=False, on_epoch=True, prog_bar=True)
        for metric in self._epoch_metrics().values():
            metric.reset()

    def _log_train_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """`train/loss_epoch` (the epoch's mean) and, at logging steps only, `train/loss_step`: the mean loss of the
        steps since the last logging step. Nothing here waits for the device: Lightning turns a progress-bar value
        logged on_step into a Python number at every step (a host sync), so the step loss goes to the loggers
        (which convert at logging steps anyway) and reaches the progress bar in on_train_batch_end of those steps."""
        per_sample = loss.expand(batch_size)  # the batch's mean once per sample: its weight (no weights, metrics.mean)
        self.train_loss_epoch.update(per_sample)
        self.train_loss_window.update(per_sample)
        connector = logger_connector(self.trainer)  # Lightning's own rule for the steps it sends to the loggers
        if connector.should_update_logs and not should_accumulate(self.trainer):
            self._check_nonfinite()  # a logging step waits for the device anyway
            self._pbar_loss = self.train_loss_window.compute()
            self.train_loss_window.reset()
            self.log("train/loss_step", self._pbar_loss, on_step=True, on_epoch=False, batch_size=batch_size)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._pbar_loss is not None:  # a logging step: its loss is converted for the loggers now anyway
            self.trainer.progress_bar_metrics["train/loss"] = float(self._pbar_loss)
            self._pbar_loss = None

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # once per optimizer step, here rather than in on_train_batch_end: a step checkpoint is written in the
        # callbacks' on_train_batch_end, which Lightning runs before the module's, and must hold this step's EMA
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def validation_step(self, batch: Sequence[torch.Tensor] | None, batch_idx: int) -> None:
        if batch is None:
            return
        images, targets = batch[0].contiguous(memory_format=self.memory_format), batch[1]
        logits = split_outputs(self.model(images))[0]
        self.val_metrics.update(logits, targets)
        self.val_loss.update(F.cross_entropy(logits, targets, reduction="none"))
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, batch_size=len(targets))
        self.log_dict(self.val_metrics, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets))
        if self.ema is not None:
            ema_logits = split_outputs(self.ema.module.eval()(images))[0]
            self.val_ema_metrics.update(ema_logits, targets)
            self.log_dict(self.val_ema_metrics, on_step=False, on_epoch=True, batch_size=len(targets))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.model)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        max_epochs = max(int(self.trainer.max_epochs or 1), 1)
        updates_per_epoch = max(-(-int(self.trainer.estimated_stepping_batches) // max_epochs), 1)
        scheduler = self.scheduler_factory(optimizer, num_epochs=max_epochs, updates_per_epoch=updates_per_epoch)
        monitorable = self._monitorable()
        if getattr(scheduler, "monitor", None) and scheduler.monitor not in monitorable:
            raise ConfigError(f"sched.monitor='{scheduler.monitor}' is not one of {', '.join(monitorable)}")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.sched_interval}}

    def _monitorable(self) -> list[str]:
        collections = [self.val_metrics] + ([self.val_ema_metrics] if self.ema is not None else [])
        return [name for c in collections for name in c.keys(keep_base=False)]

    def on_validation_epoch_end(self) -> None:
        # A plateau schedule steps here, on this epoch's validation result and before the checkpoint of this epoch
        # is written (Lightning steps its plateau schedulers after that, so a resumed run would miss one step).
        config = self.trainer.lr_scheduler_configs[0] if self.trainer.lr_scheduler_configs else None
        monitor = getattr(config.scheduler, "monitor", None) if config else None
        if monitor is None or self.trainer.sanity_checking:
            return
        collections = [self.val_metrics] + ([self.val_ema_metrics] if self.ema is not None else [])
        value = next(c[monitor] for c in collections if monitor in c.keys(keep_base=False)).compute()
        config.scheduler.step(epoch=self.current_epoch + 1, metric=float(value))

    def lr_scheduler_step(self, scheduler: Scheduler, metric: Any) -> None:
        # timm schedulers take the *next* epoch / update count: Lightning calls this after the epoch / step.
        if getattr(scheduler, "monitor", None):
            return  # a plateau schedule steps in on_validation_epoch_end
        if self.sched_interval == "step":
            scheduler.step_update(num_updates=self.trainer.global_step)
        else:
            scheduler.step(epoch=self.current_epoch + 1, metric=metric)

    def on_train_end(self) -> None:
        self._check_nonfinite()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_nonfinite()  # never a checkpoint after a non-finite step: the last one stays the last good state
        checkpoint["trainer_config"] = self.config
        checkpoint["class_names"] = self.class_names
        checkpoint["rng_states"] = rng_states()
        checkpoint["nonfinite_skipped"] = self.nonfinite_skipped
        checkpoint["epoch_metrics"] = metrics.states(self._epoch_metrics())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_ema_matches(checkpoint)
        self._rng_to_restore = checkpoint.get("rng_states")
        self.nonfinite_skipped = int(checkpoint.get("nonfinite_skipped", 0))
        saved = checkpoint.get("epoch_metrics") or checkpoint.get("epoch_means") or {}  # epoch_means: older runs
        metrics.load_states(self._epoch_metrics(), saved, self.device)

    def _check_ema_matches(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run needs the checkpoint's EMA setting: one line saying which, not a state_dict key error."""
        has_ema = any(key.startswith("ema.") for key in checkpoint.get("state_dict") or {})
        if has_ema == (self.ema is not None):
            return
        saved = ((checkpoint.get("trainer_config") or {}).get("ema") or {}).get("decay")
        if has_ema:
            fix = f"resume with the run's ema.decay={saved}" if saved is not None else "resume with ema.decay set"
            raise CheckpointError(f"the checkpoint holds EMA weights but ema.decay is not set: {fix}")
        raise CheckpointError(
            f"the checkpoint holds no EMA weights but ema.decay={self.ema.decay}: resume without ema.decay "
            "(ema.decay=null), as the run was trained"
        )
