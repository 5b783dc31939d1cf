"""Stochastic depth on any model built with timm's `DropPath`: the paper's batch-wise form, its linear-decay rule,
and a drop-path rate that can change during training.

Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016 (arXiv 1603.09382). timm models create `DropPath`
modules only when built with `drop_path_rate > 0` (timm's ResNet, for one, gives block b of N the rate
`drop_path_rate * b / (N - 1)` and leaves block 0, whose rate is 0, without one). The functions here find those
modules in model order (the order of `model.modules()`, which is depth order in timm's models) and change them in
place.
"""

from __future__ import annotations

import torch.nn as nn
from timm.layers import DropPath

from trainer.errors import ConfigError
from trainer.models.layers import BatchDropPath

DROP_PATH_MODES = ("row", "batch")  # row: timm's per-sample DropPath; batch: the paper's whole-batch form


def drop_path_modules(model: nn.Module) -> list[nn.Module]:
    """The model's `DropPath` and `BatchDropPath` modules, in model order."""
    return [m for m in model.modules() if isinstance(m, (DropPath, BatchDropPath))]


def survival_probs(num_blocks: int, final_survival_prob: float = 0.5) -> list[float]:
    """The paper's linear-decay rule (Eq. 4): p_l = 1 - (l / L) (1 - p_L) for blocks l = 1..L."""
    _check_prob("final_survival_prob", final_survival_prob)
    return [1.0 - (block / num_blocks) * (1.0 - final_survival_prob) for block in range(1, num_blocks + 1)]


def set_drop_path_mode(model: nn.Module, mode: str) -> nn.Module:
    """Swap every drop-path module for the `mode`'s kind, keeping each block's rate (p_l = 1 - rate_l), in place.

    `batch` replaces timm's `DropPath` with `BatchDropPath`; `row` replaces `BatchDropPath` with timm's `DropPath`.
    """
    if mode not in DROP_PATH_MODES:
        raise ConfigError(f"drop_path_mode '{mode}' is not one of {', '.join(DROP_PATH_MODES)}")
    replaced: dict[int, nn.Module] = {}  # a module shared by two parents gets one replacement
    for parent in model.modules():
        for name, child in parent.named_children():
            if mode == "batch" and isinstance(child, DropPath):
                new = replaced.setdefault(id(child), BatchDropPath(1.0 - child.drop_prob))
            elif mode == "row" and isinstance(child, BatchDropPath):
                new = replaced.setdefault(id(child), DropPath(1.0 - child.survival_prob))
            else:
                continue
            new.train(child.training)
            setattr(parent, name, new)
    return model


def add_missing_drop_paths(model: nn.Module) -> int:
    """Give every residual block a `BatchDropPath` where it has none, so that the linear rule covers all L blocks.

    timm builds no drop-path module where its own rate is 0 (the first block: `drop_path` is None or an Identity);
    the paper numbers the blocks l = 1..L and drops the first with 1 - p_1 = (1 / L)(1 - p_L). A block is a module
    with a `drop_path` attribute that is applied to its residual branch (timm's `has_skip=False` blocks have no
    shortcut to fall back on and are left alone). Returns how many modules were added (survival probability 1 until
    `apply_linear_decay` sets it)."""
    added = 0
    for module in list(model.modules()):
        if not hasattr(module, "drop_path") or getattr(module, "has_skip", True) is False:
            continue
        current = module.drop_path
        if current is None or type(current) is nn.Identity:
            module.drop_path = BatchDropPath(1.0)
            module.drop_path.train(module.training)
            added += 1
    return added


def apply_linear_decay(model: nn.Module, final_survival_prob: float, num_blocks: int | None = None) -> list[float]:
    """Set the drop-path modules' survival probabilities by the paper's linear-decay rule; returns them.

    The modules are the last blocks of `num_blocks` (default: one block per module). timm leaves the first block
    without a module (its rate is 0 under timm's schedule): `num_blocks=len(drop_path_modules(model)) + 1` then
    numbers the blocks as the paper does.
    """
    modules = drop_path_modules(model)
    num_blocks = len(modules) if num_blocks is None else num_blocks
    if num_blocks < len(modules):
        raise ConfigError(f"num_blocks={num_blocks} is fewer than the model's {len(modules)} drop-path modules")
    probs = survival_probs(num_blocks, final_survival_prob)[num_blocks - len(modules) :] if modules else []
    for module, prob in zip(modules, probs, strict=True):
        module.drop_prob = 1.0 - prob  # BatchDropPath.drop_prob sets its survival_prob
    return probs


def set_drop_path_rate(model: nn.Module, rate: float, num_blocks: int | None = None) -> list[float]:
    """Set the deepest block's drop rate to `rate` and the others by the same linear rule over depth
    (rate_l = (l / L) rate), on timm's `DropPath` and `BatchDropPath` alike; returns the per-module rates."""
    _check_prob("drop_path_rate", rate)
    return [1.0 - p for p in apply_linear_decay(model, 1.0 - rate, num_blocks)]


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}={value} is not a probability in [0, 1]")
