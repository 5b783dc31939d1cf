"""The baseline the benchmarks hold train.py against: the same model, optimizer and precision in a plain PyTorch
loop (forward, cross-entropy, zero_grad, backward, step), with no Lightning, scheduler, metrics or logging."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from trainer.builders import build_model
from trainer.engine import split_outputs
from trainer.engine.fast_paths import compile_model, resolve_switch

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU): a clock read after this sees it finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timed:
    steps: int
    images: int
    seconds: float

    @property
    def images_per_sec(self) -> float:
        return self.images / self.seconds

    @property
    def steps_per_sec(self) -> float:
        return self.steps / self.seconds


class PlainLoop:
    """`build_model(cfg)` on `device` with the configured optimizer, memory format, autocast and compile."""

    def __init__(self, cfg: DictConfig, num_classes: int, device: torch.device) -> None:
        self.device = device
        self.model: nn.Module = build_model(cfg, num_classes=num_classes).to(device)
        if resolve_switch(cfg.get("compile"), cfg):
            compile_model(self.model, cfg.model.name)
        self.optimizer = instantiate(cfg.optim, global_batch_size=cfg.data.batch_size)(self.model)
        self.memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
        dtype = AUTOCAST_DTYPES.get(str(cfg.trainer.precision))
        self.autocast = (
            (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
        )
        self.label_smoothing = float(cfg.loss.label_smoothing)
        self.model.train()

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        inputs = inputs.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        targets = targets.to(self.device, non_blocking=True)
        with self.autocast():
            logits = split_outputs(self.model(inputs))[0]  # auxiliary heads: unused
            loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def run(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], warmup: int = 0) -> Timed:
        """Train on `batches`; the first `warmup` steps are not timed, the rest from the request of their first
        batch to the device finishing the last step."""
        steps = images = 0
        start = time.perf_counter()
        for index, (inputs, targets) in enumerate(batches):
            self.step(inputs, targets)
            if index < warmup:
                if index == warmup - 1:
                    synchronize(self.device)
                    start = time.perf_counter()
                continue
            steps += 1
            images += len(targets)
        synchronize(self.device)
        return Timed(steps, images, time.perf_counter() - start)
