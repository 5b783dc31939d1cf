"""The run's metrics, all torchmetrics, made so that updating them never waits for the device, and their states kept
in step checkpoints (a run resumed in the middle of an epoch logs the epoch's figures the uninterrupted run logs)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from trainer.compat import set_update_count


def accuracy(num_classes: int) -> MetricCollection:
    """Micro-averaged top-1 and top-5 accuracy (top-k: at most the number of classes), in [0, 1].

    validate_args=False: the argument checks call torch.unique, a wait for the device at every batch (a label out of
    range still fails, in one_hot or in the loss).
    """
    return MetricCollection(
        {
            f"top{k}": MulticlassAccuracy(num_classes, top_k=min(k, num_classes), average="micro", validate_args=False)
            for k in (1, 5)
        }
    )


def mean(**kwargs: Any) -> MeanMetric:
    """A mean of per-sample values, summed on their device. nan_strategy="disable": the NaN check waits for the device
    (torchmetrics 1.9 also drops the weights with it, Lightning-AI/torchmetrics#3434: update with one value per
    sample, never with weights)."""
    return MeanMetric(nan_strategy="disable", **kwargs)


def states(metrics: Mapping[str, Metric]) -> dict[str, dict[str, Any]]:
    """The metrics' states (on the CPU) and update counts, for a checkpoint."""
    return {
        name: {
            "state": {key: value.detach().cpu() for key, value in metric.metric_state.items()},
            "updates": metric.update_count,
        }
        for name, metric in metrics.items()
    }


def load_states(metrics: Mapping[str, Metric], saved: Mapping[str, Any], device: torch.device | str) -> None:
    """Put `states()`' output back into `metrics` (on `device`); names not in `metrics` are ignored."""
    for name, entry in saved.items():
        if name not in metrics:
            continue
        if "state" not in entry:  # written before the metrics were torchmetrics'
            warnings.warn(
                f"the checkpoint's running '{name}' is in an older format: it counts from the resume point",
                stacklevel=2,
            )
            continue
        metric = metrics[name]
        metric.reset()
        metric.merge_state({key: value.to(device) for key, value in entry["state"].items()})
        set_update_count(metric, int(entry["updates"]))
