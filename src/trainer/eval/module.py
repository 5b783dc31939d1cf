"""Evaluation under Lightning: a protocol's views of each batch through the model(s), scored into sums that add up
over processes, so `trainer.test()` on several devices gives what one process gives.

Each process reads its own share of the images, every image once (the data module's exact sharding, as training's
validation); the scores are torchmetrics' (accuracy, mean loss) and a confusion matrix, states of counts and sums added
over the processes when the evaluation ends. Nothing waits for the device per batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn as nn
from torchmetrics import Metric

from trainer.engine import metrics
from trainer.eval.protocols import Protocol, losses_of, predict


class ConfusionMatrix(Metric):
    """Counts of (true class, predicted class) pairs (rows: true class), summed over batches and processes. Written
    here: torchmetrics' MulticlassConfusionMatrix counts with bincount, whose output size waits for the device."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("counts", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predicted: torch.Tensor, targets: torch.Tensor) -> None:
        pairs = targets * self.num_classes + predicted
        self.counts.view(-1).index_add_(0, pairs, torch.ones_like(pairs))

    def compute(self) -> torch.Tensor:
        return self.counts


class ProtocolScores(nn.Module):
    """One model's top-1/top-5 accuracy (validation's metrics: a centre-crop evaluation equals the run's own validation
    exactly), mean loss, image count and (with `confusion`) confusion matrix, over batches and processes."""

    def __init__(self, num_classes: int, confusion: bool = True) -> None:
        super().__init__()
        self.accuracy = metrics.accuracy(num_classes)
        self.loss = metrics.mean().set_dtype(torch.float64)  # the per-image float32 losses add up as Python floats
        self.confusion = ConfusionMatrix(num_classes) if confusion else None

    def update(self, scores: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor) -> None:
        """`scores` (B, classes) of a batch with `targets` (B,); `losses` (B,) per image."""
        self.accuracy.update(scores, targets)
        self.loss.update(losses)
        if self.confusion is not None:
            self.confusion.update(scores.argmax(-1), targets)

    def compute(self) -> dict[str, Any]:
        accuracy = self.accuracy.compute()
        with self.loss.sync_context():  # its states summed over the processes, inside
            images = int(self.loss.weight)
            loss = float(self.loss.mean_value / self.loss.weight) if images else 0.0
        return {
            "top1": 100 * float(accuracy["top1"]),
            "top5": 100 * float(accuracy["top5"]),
            "loss": loss,
            "images": images,
            "confusion": self.confusion.compute().cpu() if self.confusion is not None else None,
        }


def _in_memory_format(images: Any, memory_format: torch.memory_format) -> Any:
    """Image batches (B, C, H, W) in `memory_format`; view stacks and multi-scale lists as they are."""
    if isinstance(images, torch.Tensor):
        return images.contiguous(memory_format=memory_format if images.ndim == 4 else torch.contiguous_format)
    return [_in_memory_format(part, memory_format) for part in images]


class EvaluationModule(L.LightningModule):
    """`models` (raw and/or ema weights; the first is the one reported per class) under `protocol`, on the batches of
    `loader()`, made once the trainer's processes have started (each makes its own share). After `trainer.test()`,
    `results` holds per model the totals over every process (ProtocolScores.compute), and `seconds` the time the
    evaluation took on this process.

    `views_per_forward` caps the views per forward pass (memory); mixed precision is the trainer's (`precision`).
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        protocol: Protocol,
        num_classes: int,
        loader: Callable[[], Iterable],
        *,
        channels_last: bool = False,
        views_per_forward: int | None = None,
    ) -> None:
        super().__init__()
        self.models = nn.ModuleDict(dict(models))
        first = next(iter(models))
        self.scores = nn.ModuleDict({name: ProtocolScores(num_classes, confusion=name == first) for name in models})
        self.protocol = protocol
        self.make_loader = loader
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.views_per_forward = views_per_forward
        self.results: dict[str, dict[str, Any]] = {}
        self.seconds = 0.0
        self._start = 0.0

    def test_dataloader(self) -> Iterable:
        return self.make_loader()

    def on_test_epoch_start(self) -> None:
        self._start = time.perf_counter()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        if batch is None:  # every image of the batch was undecodable and skipped
            return
        images, targets = _in_memory_format(batch[0], self.memory_format), batch[1]
        for name, model in self.models.items():
            scores, is_prob = predict(self.protocol.name, model, images, self.views_per_forward, self.protocol.flips)
            self.scores[name].update(scores, targets, losses_of(scores, is_prob, targets))

    def on_test_epoch_end(self) -> None:
        self.results = {name: scores.compute() for name, scores in self.scores.items()}  # summed over processes
        self.seconds = time.perf_counter() - self._start
