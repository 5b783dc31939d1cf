"""Switches for the GPU fast paths (channels_last, torch.compile): `null` means on when training on CUDA, and
torch.compile with a fallback to eager execution when compiling a model fails."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig

from trainer.compat import compiled_call, eager_call, set_compiled_call

CUDA_ACCELERATORS = ("gpu", "cuda")


def on_cuda(cfg: DictConfig) -> bool:
    """Whether `cfg.trainer` trains on CUDA devices (`accelerator: auto` does where torch sees a GPU)."""
    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator == "auto":
        return torch.cuda.is_available()
    return accelerator in CUDA_ACCELERATORS


def resolve_switch(value: bool | None, cfg: DictConfig) -> bool:
    """An on/off fast path: true/false as given, null (the default) on when training on CUDA."""
    return on_cuda(cfg) if value is None else bool(value)


def compile_model(model: nn.Module, name: str, **compile_kwargs: Any) -> nn.Module:
    """`model.compile(**compile_kwargs)` in place (state_dict keys stay the model's own), falling back to eager.

    Compilation happens at the first call (and again when a call needs a new graph). When a compiled call raises
    but the same call succeeds eagerly, the failure was the compiler's: one warning names the model and the
    error's first line, and the model runs eagerly from then on. When the eager call fails too, that error is
    raised as it is (the model itself is broken, not its compilation).
    """
    model.compile(**compile_kwargs)
    compiled = compiled_call(model)  # what nn.Module.__call__ runs when set (torch's own compile hook)

    @functools.wraps(compiled)
    def call_with_fallback(*args: Any, **kwargs: Any) -> Any:
        try:
            return compiled(*args, **kwargs)
        except Exception as compile_error:  # any compiler failure: the eager call below tells it from a bug
            set_compiled_call(model, None)  # eager from now on
            try:
                outputs = eager_call(model)(*args, **kwargs)
            except Exception:
                set_compiled_call(model, call_with_fallback)  # the model's own error, not the compiler's
                raise
            cause = compile_error
            # dynamo wraps the backend's error (BackendCompilerFailed.inner_exception): name the original
            while (inner := getattr(cause, "inner_exception", None) or cause.__cause__) is not None:
                cause = inner
            first_line = (str(cause).strip().splitlines() or [""])[0]
            warnings.warn(
                f"torch.compile failed for model '{name}' ({type(cause).__name__}: {first_line}); "
                f"running it eagerly (set compile=false to skip compiling)",
                stacklevel=2,
            )
            return outputs

    set_compiled_call(model, call_with_fallback)
    return model


def is_compiled(model: nn.Module) -> bool:
    """Whether calls to `model` go through torch.compile (false before compile_model and after a fallback)."""
    return compiled_call(model) is not None
