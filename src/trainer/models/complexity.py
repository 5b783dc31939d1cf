"""Parameters and multiply-adds of a model, counted on PyTorch's meta device (shapes only: nothing is allocated
or initialised, so even the largest networks are measured in milliseconds).

Parameters are split the way the papers count them: the inference network (what an eval-mode forward uses, the
network `aux_logits=False` builds) and the auxiliary heads (modules with parameters that only training runs:
GoogLeNet's and NASNet-A's side classifiers). GoogLeNet's 6.8 M and NASNet-A's 5.3 M / 88.9 M are the former.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from trainer.models.catalogue import create_model, get_entry


class Complexity(NamedTuple):
    params: int  # the inference network's parameters (an eval-mode forward uses them)
    aux_params: int  # the auxiliary heads' parameters (training only)
    macs: int  # multiply-adds of one image at the measured resolution


def meta_model(name: str, **kwargs: Any) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs).eval()


def count_macs(model: nn.Module, resolution: int, in_chans: int = 3) -> int:
    """Multiply-adds of one image: FlopCounterMode counts convolutions and matrix products, 2 FLOPs per MAC."""
    return measure(model, resolution, in_chans).macs


def measure(model: nn.Module, resolution: int, in_chans: int = 3) -> Complexity:
    """Parameters (inference network, auxiliary heads) and multiply-adds of `model` in eval mode, one forward."""
    device = next(model.parameters()).device
    called: set[int] = set()
    hooks = [m.register_forward_pre_hook(lambda m, _: called.add(id(m))) for m in model.modules()]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, in_chans, resolution, resolution, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    unused = {id(p): p for m in model.modules() if id(m) not in called for p in m.parameters(recurse=False)}
    total = {id(p): p for p in model.parameters()}
    aux = sum(p.numel() for p in unused.values())
    return Complexity(sum(p.numel() for p in total.values()) - aux, aux, counter.get_total_flops() // 2)


def complexity(name: str, resolution: int | None = None) -> Complexity:
    """(inference parameters, auxiliary-head parameters, multiply-adds) of catalogue model `name` as built by
    default, at 1000 classes, at its native resolution by default."""
    return measure(meta_model(name), resolution or get_entry(name).resolution)
