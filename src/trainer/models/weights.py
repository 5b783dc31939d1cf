"""Starting from weights users already have: `model.init_from=<path>`.

Reads a state_dict or a checkpoint (Lightning, timm or torchvision files, e.g. from the torch hub cache) as
tensors only (trainer/io.py), unwraps it, strips wrapper prefixes, maps keys where the layouts differ (the
model module's timm-style `checkpoint_filter_fn`), drops tensors whose shapes do not fit (a classifier for other
classes), and reports what was missing or unexpected.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from trainer.errors import CheckpointError
from trainer.io import has_ema, load, strip_prefixes

_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")  # DDP, our LightningModule, torch.compile
_STATE_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


@dataclass
class LoadReport:
    path: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def summary(self, limit: int = 6) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")

        parts = [f"init_from '{self.path}': loaded {self.loaded} tensors"]
        for label, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape mismatch, kept model's", self.mismatched),
        ):
            if keys:
                parts.append(f"{label}: {few(keys)}")
        return "; ".join(parts)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors in a weights or checkpoint file (read by trainer.io.load), with wrapper prefixes
    removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model.init_from '{path}' does not exist")
    obj = load(path)
    for key in _STATE_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"'{path}' holds no state_dict of tensors")
    if has_ema(obj) and any(not k.startswith("ema.") for k in obj):
        obj = {k: v for k, v in obj.items() if not k.startswith("ema.")}  # our checkpoints: the raw weights
    return strip_prefixes(obj, _WRAPPER_PREFIXES)


def _filter_fn(model: nn.Module):
    """The model module's timm-style key mapping, if it has one (`checkpoint_filter_fn(state_dict, model)`)."""
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    if fn is None:
        return None
    if len(inspect.signature(fn).parameters) == 1:
        return lambda sd: fn(sd)
    return lambda sd: fn(sd, model)


def load_weights(model: nn.Module, path: str | Path) -> LoadReport:
    """Load `path` into `model` non-strictly and report what did not fit."""
    state = read_state_dict(path)
    own = model.state_dict()
    mapper = _filter_fn(model)
    if mapper is not None and not set(state) <= set(own):
        state = mapper(state)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    fitting = {k: v for k, v in state.items() if k in own and k not in mismatched}
    result = model.load_state_dict(fitting, strict=False)
    return LoadReport(
        path=str(path),
        loaded=len(fitting),
        missing=sorted(k for k in result.missing_keys if k not in mismatched),
        unexpected=sorted(k for k in state if k not in own),
        mismatched=sorted(mismatched),
    )
