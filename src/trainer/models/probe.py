"""The network as built, in training mode, probed on the meta device: how many auxiliary outputs it returns and
the smallest input it accepts (no memory, no weights, nothing of the real model touched).

The catalogue's `min_resolution` is that of the default build; a model built with its auxiliary heads (Inception
v3's `aux_logits=True`) needs more in training, where the heads run: the head's unpadded 5x5/3 pool and 5x5 conv
need a 17x17 map where the main path is content with 3x3. A training run checks its resolution on the network it
will train, at start, instead of at the first step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from trainer.models.catalogue import create_model

SEARCH_LIMIT = 2048  # the largest input the smallest-input search tries


def meta_twin(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """`create_model(name, ...)` on the meta device, in training mode: shapes only, built in milliseconds."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **kwargs)
    return model.train()


def training_outputs(model: nn.Module, resolution: int) -> int | str:
    """The number of auxiliary outputs `model` (on the meta device, training mode) returns for a batch of two
    `resolution` x `resolution` images, or why the forward fails (one line)."""
    try:
        outputs = model(torch.empty(2, 3, resolution, resolution, device="meta"))
    except (RuntimeError, ValueError) as e:  # torch's size errors, and our InputSizeError (a RuntimeError)
        return " ".join(str(e).split())[:200]
    return len(outputs) - 1 if isinstance(outputs, (tuple, list)) else 0


def smallest_input(accepts: Callable[[int], bool], low: int, high: int = SEARCH_LIMIT) -> int | None:
    """The smallest size in [low, high] that `accepts`, assuming sizes above an accepted one are accepted too
    (true of these networks: each layer's output grows with its input); None if even `high` is refused.
    `low` first (the usual answer, one probe), then doubling, then bisection."""
    refused = low - 1
    size = low
    while not accepts(size):
        if size >= high:
            return None
        refused, size = size, min(2 * size, high)
    while size - refused > 1:  # refused < answer <= size
        middle = (refused + size) // 2
        if accepts(middle):
            size = middle
        else:
            refused = middle
    return size
