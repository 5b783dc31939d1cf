"""Evaluation under Lightning: a protocol's views of each batch through the model(s), scored into sums that add up
over processes, so `trainer.test()` on several devices gives what one process gives.

Each process reads its own share of the images, every image once (the data module's exact sharding, as training's
validation); the scores are counts and sums (top-1 and top-5 hits, summed loss, images, the confusion matrix), added
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

from trainer.eval.protocols import Protocol, loss_of, predict


class ProtocolScores(Metric):
    """One model's top-1/top-5 hits, summed loss, image count and (with `confusion`) confusion matrix (rows: true
    class, columns: predicted), each a sum over batches and processes.

    Top-1 and top-5 are computed as torchmetrics' micro-averaged MulticlassAccuracy, which validation logs, computes
    them (the hits of argmax and of topk, divided in float32): a centre-crop evaluation equals the run's own validation
    exactly.
    """

    full_state_update = False

    def __init__(self, num_classes: int, confusion: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.top_k = min(5, num_classes)
        self.with_confusion = confusion
        for name in ("top1", "top5", "images"):
            self.add_state(name, torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        # float64: the per-batch float32 sums add up as Python floats would
        self.add_state("loss", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        if confusion:
            self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """`scores` (B, classes) of a batch with `targets` (B,); `loss` the batch's summed loss."""
        predicted = scores.argmax(-1)
        self.top1 += (predicted == targets).sum()
        self.top5 += (scores.topk(self.top_k, dim=-1).indices == targets[:, None]).any(-1).sum()
        self.images += len(targets)
        self.loss += loss.double()
        if self.with_confusion:
            pairs = targets * self.num_classes + predicted
            # index_add_, not bincount: bincount sizes its output from the data, a wait for the device
            self.confusion.view(-1).index_add_(0, pairs, torch.ones_like(pairs))

    def compute(self) -> dict[str, Any]:
        images = self.images.clamp_min(1).float()
        return {
            "top1": 100 * float(self.top1.float() / images),
            "top5": 100 * float(self.top5.float() / images),
            "loss": float(self.loss) / max(int(self.images), 1),
            "images": int(self.images),
            "confusion": self.confusion.cpu() if self.with_confusion else None,
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
            self.scores[name].update(scores, targets, loss_of(scores, is_prob, targets))

    def on_test_epoch_end(self) -> None:
        self.results = {name: scores.compute() for name, scores in self.scores.items()}  # summed over processes
        self.seconds = time.perf_counter() - self._start
