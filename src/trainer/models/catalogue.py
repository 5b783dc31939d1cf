"""The catalogue: one registry of the backbones from the papers, on top of timm's registry.

Each entry names a timm model (timm's own, or one of ours registered into timm) and carries the paper's facts:
title, year, arXiv id, input resolution and eval crop ratio, the reported top-1/top-5 and how they were measured,
the family's recipe, and the parameter count (checked against the built model by the tests): the inference
network's, as the papers count it, with the auxiliary heads' (GoogLeNet, NASNet-A) separately in `aux_params`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from trainer.errors import ConfigError, InputSizeError, close_matches

TIMM_PREFIX = "timm/"
CIFAR_PROTOCOLS = ("C10", "C10+", "C100", "C100+")  # "+": the papers' standard augmentation (pad 4, crop, flip)
# what timm.create_model and build_model_with_cfg consume themselves, beside the model class's own arguments
_BUILDER_KWARGS = frozenset(
    {
        *(
            n
            for n in inspect.signature(timm.create_model).parameters
            if n not in ("model_name", "pretrained", "kwargs")
        ),
        "features_only",
        "out_indices",
        "feature_cls",
    }
)
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    year: int
    arxiv: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: str  # a name in timm's registry; our own models are registered there too
    family: str
    paper: Paper
    params: int  # the inference network's at 1000 classes, as the papers count (the aux_logits=False build)
    recipe: str  # the file in recipes/ that trains it the way the paper did
    resolution: int = 224
    crop_ratio: float = 0.875  # eval: resize shorter side to resolution / crop_ratio, then center crop
    interpolation: str = "bilinear"
    min_resolution: int = 32  # the smallest input the architecture accepts
    top1: float | None = None  # the paper's reported accuracy, %
    top5: float | None = None
    protocol: str = "1-crop"  # how the paper measured top1/top5
    source: str = "timm"  # "timm" (timm implements the paper's network) or "own" (written here)
    notes: str = ""
    aux_params: int = 0  # the auxiliary heads' parameters in the default build (training only; the papers omit them)
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    # the paper's CIFAR test errors (%), by protocol: C10 / C100 (no augmentation), C10+ / C100+ (4-px pad, random
    # 32-px crop, flip); empty for networks without a CIFAR result
    cifar_error: Mapping[str, float] = field(default_factory=dict)
    cifar_params: int = 0  # a CIFAR network's parameters at 10 classes, as its paper counts them (0: no CIFAR result)
    # input defaults that depend on the constructor arguments (compound scaling's resolution): kwargs -> overrides
    data_defaults_from_kwargs: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        unknown = set(self.cifar_error) - set(CIFAR_PROTOCOLS)
        if unknown:
            raise ValueError(f"catalogue entry '{self.name}': cifar_error protocols {sorted(unknown)} are not CIFAR's")
        if bool(self.cifar_error) != bool(self.cifar_params):
            raise ValueError(f"catalogue entry '{self.name}': a CIFAR result needs cifar_params (10 classes), and back")
        object.__setattr__(self, "cifar_error", MappingProxyType(dict(self.cifar_error)))


@dataclass(frozen=True)
class DataDefaults:
    """What a model expects of its input: the data config takes these unless overridden."""

    resolution: int
    crop_ratio: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def pretrained_cfg(**overrides: Any) -> dict[str, Any]:
    """timm's pretrained_cfg for a network registered here: no weights to fetch, ImageNet input at 224 px."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        **overrides,
    }


_CATALOGUE: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add an entry. A duplicate name raises: two entries must never silently shadow each other."""
    if entry.name in _CATALOGUE:
        raise ValueError(f"model '{entry.name}' is already in the catalogue")
    if entry.name.startswith(TIMM_PREFIX):
        raise ValueError(f"catalogue names must not start with '{TIMM_PREFIX}' (reserved for timm's own names)")
    if not timm.is_model(entry.builder):
        raise ValueError(f"catalogue entry '{entry.name}': '{entry.builder}' is not in timm's registry")
    _CATALOGUE[entry.name] = entry
    return entry


def list_models(pattern: str | None = None) -> list[str]:
    """Catalogue names, sorted; `pattern` is a shell-style wildcard ('resnet*')."""
    names = sorted(_CATALOGUE)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_entry(name: str) -> ModelEntry:
    """The catalogue entry for `name`; an unknown name raises with the closest catalogue names."""
    try:
        return _CATALOGUE[name]
    except KeyError:
        raise ConfigError(
            f"unknown model '{name}'; closest catalogue names: {close_matches(name, _CATALOGUE)} "
            f"(any timm model: model=timm/<name>)"
        ) from None


def _timm_name(name: str) -> tuple[str, dict[str, Any]]:
    if name.startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX) :]
        if not timm.is_model(timm_name):
            raise ConfigError(
                f"unknown timm model '{timm_name}'; closest timm names: {close_matches(timm_name, timm.list_models())}"
            )
        return timm_name, {}
    entry = get_entry(name)
    return entry.builder, dict(entry.kwargs)


def _init_arguments(cls: type) -> set[str]:
    """The keyword arguments `cls(...)` takes: its __init__'s, its bases' where it passes **kwargs on, and the
    fields of a `cfg` dataclass that timm overlays **kwargs onto (RegNet, CspNet, ByobNet)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is nn.Module or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind not in _VARIADIC and p.name != "self"}
        cfg = next((p.annotation for p in params if p.name == "cfg"), None)
        if isinstance(cfg, type) and dataclasses.is_dataclass(cfg):
            names |= {f.name for f in dataclasses.fields(cfg)}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return names


@functools.cache
def accepted_kwargs(name: str) -> frozenset[str] | None:
    """The constructor arguments `create_model(name, ...)` accepts: the model class's (found by building the model
    on the meta device, so no weights are allocated) and those timm's builder takes itself. None where the model
    cannot be built on the meta device (then timm's own checks are all there is)."""
    timm_name, defaults = _timm_name(name)
    try:
        with torch.device("meta"):
            model_cls = type(timm.create_model(timm_name, pretrained=False, **defaults))
    except Exception:
        return None
    return frozenset(_init_arguments(model_cls) | _entrypoint_arguments(timm_name) | _BUILDER_KWARGS)


def _entrypoint_arguments(timm_name: str) -> set[str]:
    """The named arguments of the registered builder itself (e.g. efficientnet_compound's phi, alpha, beta, gamma)."""
    params = inspect.signature(timm.models.model_entrypoint(timm_name)).parameters.values()
    return {p.name for p in params if p.kind not in _VARIADIC and p.name != "pretrained"}


def check_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise a one-line ConfigError for an argument the model does not take. timm would drop some silently (any
    value None, and anything a model's **kwargs swallows); here every one is checked against the constructor."""
    accepted = accepted_kwargs(name) if kwargs else None
    if accepted is None:
        return
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(
            f"model '{name}' does not accept {', '.join(unknown)}; it accepts: {', '.join(sorted(accepted))}"
        )


class MinResolutionCheck:
    """A forward pre-hook: an input smaller than the architecture accepts fails with one line naming the model and
    its minimum, not with a shape error from deep inside the network."""

    def __init__(self, name: str, min_resolution: int) -> None:
        self.name, self.min_resolution = name, min_resolution

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.ndim == 4 and min(x.shape[-2:]) < self.min_resolution:
            raise InputSizeError(
                f"model '{self.name}' needs inputs of at least {self.min_resolution}x{self.min_resolution} pixels; "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )


def _aux_heads_in_training_only(module: nn.Module, args: tuple[Any, ...]) -> None:
    """A forward pre-hook for timm's Inception v3 built with `aux_logits=True`, which otherwise returns
    (main, aux) in eval mode too: the auxiliary head runs in training only, so eval returns the main logits
    (and runs below the 299 px the auxiliary head needs)."""
    module.aux_logits = module.training and module.AuxLogits is not None


def check_resolution(name: str, resolution: int) -> None:
    """A configured input resolution below what catalogue model `name` accepts: a one-line ConfigError."""
    if name.startswith(TIMM_PREFIX):
        return  # timm's own models carry no minimum
    smallest = get_entry(name).min_resolution
    if resolution < smallest:
        raise ConfigError(f"model '{name}' needs a resolution of at least {smallest} px; data.resolution={resolution}")


def create_model(name: str, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Build a catalogue model (or `timm/<name>` for any timm model) through `timm.create_model`.

    kwargs go to the model's constructor (e.g. `drop_rate`, `features_only=True`) over the entry's own defaults;
    one the constructor does not take raises a ConfigError naming the accepted ones. A catalogue model refuses
    inputs below its entry's `min_resolution` (a forward pre-hook). Auxiliary heads (`aux_logits=True`) run in
    training only: the model returns (main, aux) in training and the main logits in eval.
    """
    timm_name, defaults = _timm_name(name)
    check_kwargs(name, kwargs)
    for rate in ("drop_rate", "drop_path_rate"):
        if rate in kwargs and not 0.0 <= kwargs[rate] < 1.0:
            raise ConfigError(f"model '{name}': {rate}={kwargs[rate]} is outside [0, 1)")
    model = timm.create_model(
        timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **{**defaults, **kwargs}
    )
    if not name.startswith(TIMM_PREFIX):
        model.register_forward_pre_hook(MinResolutionCheck(name, get_entry(name).min_resolution))
    if getattr(model, "aux_logits", False) is True and hasattr(model, "AuxLogits"):  # timm's Inception v3
        model.register_forward_pre_hook(_aux_heads_in_training_only)
    return model


def data_defaults(name: str, kwargs: Mapping[str, Any] | None = None) -> DataDefaults:
    """Input resolution, crop ratio and interpolation from the paper (catalogue) or timm, mean/std from timm; for an
    entry whose input follows from its constructor arguments (`data_defaults_from_kwargs`), from `kwargs`."""
    timm_name, _ = _timm_name(name)
    cfg = timm.models.get_pretrained_cfg(timm_name)
    mean, std = tuple(cfg.mean), tuple(cfg.std)
    if name.startswith(TIMM_PREFIX):
        return DataDefaults(cfg.input_size[-1], cfg.crop_pct, cfg.interpolation or "bilinear", mean, std)
    entry = get_entry(name)
    defaults = DataDefaults(entry.resolution, entry.crop_ratio, entry.interpolation, mean, std)
    if entry.data_defaults_from_kwargs is not None:
        defaults = dataclasses.replace(defaults, **entry.data_defaults_from_kwargs(kwargs or {}))
    return defaults
