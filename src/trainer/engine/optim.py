"""Optimizers through timm's factory, with weight-decay groups chosen by module type and explicit lr scaling."""

from __future__ import annotations

import inspect
from typing import Any

import timm.optim
import torch
import torch.nn as nn

from trainer.compat import ConvNd, NormBase
from trainer.errors import ConfigError, close_matches

# Parameters of these modules are never weight-decayed unless asked (scale/shift of a normalisation).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
LR_SCALINGS = ("none", "linear", "sqrt")
STEP_IMPLS = ("auto", "fused", "foreach", "for_loop")


def scale_lr(lr: float, ref_batch_size: int | None, global_batch_size: int | None, lr_scaling: str) -> float:
    """The lr for `global_batch_size`, given the `lr` a recipe states for `ref_batch_size`."""
    if lr_scaling not in LR_SCALINGS:
        raise ConfigError(f"optim.lr_scaling='{lr_scaling}' is not one of {', '.join(LR_SCALINGS)}")
    if lr_scaling == "none" or not ref_batch_size or not global_batch_size:
        return lr
    ratio = global_batch_size / ref_batch_size
    return lr * (ratio if lr_scaling == "linear" else ratio**0.5)


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise convolution: one filter per input channel (groups == in_channels > 1)."""
    return isinstance(module, ConvNd) and module.groups > 1 and module.groups == module.in_channels


def param_groups(
    model: nn.Module, weight_decay: float, decay_norm_and_bias: bool, decay_depthwise: bool = True
) -> list[dict[str, Any]]:
    """Two groups: conv/linear (and other) weights get `weight_decay`; norm-layer parameters and biases get 0,
    unless `decay_norm_and_bias`; depthwise convolution weights get 0 unless `decay_depthwise` (MobileNet v1,
    Sec. 4: "very little or no weight decay on the depthwise filters"). Chosen by module type and parameter role,
    not by matching names."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            exempt = (isinstance(module, NORM_TYPES) or name == "bias") and not decay_norm_and_bias
            exempt = exempt or (is_depthwise(module) and not decay_depthwise)
            (no_decay if exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def step_impl_kwargs(opt: str, step_impl: str, device_type: str) -> dict[str, bool]:
    """The optimizer kwargs that pick how its step runs over the parameters: `fused` (one kernel for all of them),
    `foreach` (multi-tensor ops), `for_loop` (one parameter at a time) or `auto`: fused on CUDA where the optimizer
    offers it (torch's SGD, Adam, AdamW), else foreach where it offers that, else the optimizer's default."""
    if step_impl not in STEP_IMPLS:
        raise ConfigError(f"optim.step_impl='{step_impl}' is not one of {', '.join(STEP_IMPLS)}")
    offered = inspect.signature(timm.optim.get_optimizer_class(opt, bind_defaults=False)).parameters
    if step_impl == "auto":
        if device_type == "cuda" and "fused" in offered:
            return {"fused": True}
        return {"foreach": True} if "foreach" in offered else {}
    if step_impl == "for_loop":
        return {"foreach": False} if "foreach" in offered else {}
    if step_impl not in offered:
        raise ConfigError(f"optim.step_impl={step_impl}: optimizer '{opt}' has no {step_impl} implementation")
    return {step_impl: True}


def create_optimizer(
    model: nn.Module,
    *,
    opt: str = "sgd",
    lr: float = 0.1,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    decay_norm_and_bias: bool = False,
    decay_depthwise: bool = True,
    ref_batch_size: int | None = None,
    lr_scaling: str = "none",
    global_batch_size: int | None = None,
    step_impl: str = "auto",
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build an optimizer with timm's `create_optimizer_v2`.

    `opt` is a timm optimizer name; `sgd` here is plain SGD with heavy-ball momentum, Nesterov when `nesterov`
    (timm's own 'sgd' means Nesterov). The lr is rescaled from `ref_batch_size` to `global_batch_size` by
    `lr_scaling`. Extra kwargs (eps, alpha, betas, trust_coeff, ...) go to the optimizer. `rmsproptf` is timm's
    TensorFlow-form RMSProp (epsilon inside the square root, the Inception/MobileNet/NASNet/EfficientNet papers'),
    `lars` timm's LARS. `step_impl` (see `step_impl_kwargs`) is chosen for the device the parameters are on: Lightning
    moves the model there before it calls `configure_optimizers`.
    """
    if opt == "sgd":
        opt = "nesterov" if nesterov else "momentum"
    if opt not in timm.optim.list_optimizers():
        raise ConfigError(
            f"unknown optimizer optim.opt='{opt}'; closest: {close_matches(opt, timm.optim.list_optimizers())}"
        )
    lr = scale_lr(lr, ref_batch_size, global_batch_size, lr_scaling)
    groups = param_groups(model, weight_decay, decay_norm_and_bias, decay_depthwise)
    device_type = next((p.device.type for p in model.parameters()), "cpu")
    kwargs = {**step_impl_kwargs(opt, step_impl, device_type), **kwargs}
    return timm.optim.create_optimizer_v2(
        groups, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum, **kwargs
    )
