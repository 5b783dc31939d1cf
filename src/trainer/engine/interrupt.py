"""Ctrl-C and SLURM's requeue signal, handled between two training steps, so that nothing is lost.

Lightning saves the requeue checkpoint inside the signal handler, i.e. wherever the main thread happens to be: in
the middle of an optimizer step (some weights updated, others not) or of a batch's bookkeeping. Ctrl-C raises
KeyboardInterrupt there and saves nothing. Here both signals only set a flag; at the end of the current training
batch (a consistent state: the step done, its EMA update done, the loader's position known) the callback
- SIGINT: writes a step checkpoint (step=<n>.ckpt, last.ckpt links to it) and stops the run (exit status 1,
  Lightning's for KeyboardInterrupt); a second Ctrl-C before that stops at once;
- the SLURM requeue signal (`slurm.requeue_signal`, with `slurm.auto_requeue`): runs Lightning's own handler then
  (hpc_ckpt_<n>.ckpt on every rank, `scontrol requeue` on rank 0).
With several processes, rank 0's flag decides for all (broadcast each step, as Lightning broadcasts SIGTERM's).
`resume=auto` then continues exactly where the run stopped (data/base.py: the loader's position).
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any

import lightning as L
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info

from trainer.compat import cluster_environment, slurm_requeue_handler
from trainer.engine.last_checkpoint import LastCheckpoint


class DeferredInterrupt(L.Callback):
    def __init__(self) -> None:
        self._pending: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self._pending == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self._pending = int(signum)

    def _install(self, signum: int) -> None:
        with contextlib.suppress(ValueError):  # not the main thread: leave the signals alone
            self._previous[signum] = signal.signal(signum, self._handler)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = None
        self._install(signal.SIGINT)
        env = cluster_environment(trainer)
        if isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal is not None:
            self._install(int(env.requeue_signal))  # replaces Lightning's handler, which we call at a step's end

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        pending = self._pending
        if trainer.world_size > 1:
            pending = trainer.strategy.broadcast(pending, src=0)
        if pending is None:
            return
        self._pending = None
        if pending == signal.SIGINT:
            saver = next((c for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)), None)
            if saver is not None:
                saver.save_now(trainer)
            rank_zero_info(
                f"interrupted (Ctrl-C) at step {trainer.global_step}"
                + (f": saved {saver.last_model_path}; resume=auto continues from it" if saver else "")
            )
            raise KeyboardInterrupt
        slurm_requeue_handler(trainer)(pending, None)
