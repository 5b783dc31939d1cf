"""Parameters and multiply-adds of a model, counted on PyTorch's meta device (shapes only: nothing is allocated
or initialised, so even the largest networks are measured in milliseconds)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from trainer.models.catalogue import create_model, get_entry


def meta_model(name: str, **kwargs: Any) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs).eval()


def count_macs(model: nn.Module, resolution: int, in_chans: int = 3) -> int:
    """Multiply-adds of one image: FlopCounterMode counts convolutions and matrix products, 2 FLOPs per MAC."""
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, in_chans, resolution, resolution, device=device))
    return counter.get_total_flops() // 2


def complexity(name: str, resolution: int | None = None) -> tuple[int, int]:
    """(parameters, multiply-adds) of catalogue model `name` at 1000 classes, at its native resolution by default."""
    model = meta_model(name)
    params = sum(p.numel() for p in model.parameters())
    return params, count_macs(model, resolution or get_entry(name).resolution)
