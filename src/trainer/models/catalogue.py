"""The catalogue: one registry of the backbones from the papers, on top of timm's registry.

Each entry names a timm model (timm's own, or one of ours registered into timm) and carries the paper's facts:
title, year, arXiv id, input resolution and eval crop ratio, the reported top-1/top-5 and how they were measured,
the family's recipe, and the parameter count (checked against the built model by the tests).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import timm
import torch.nn as nn

from trainer.errors import ConfigError, close_matches

TIMM_PREFIX = "timm/"


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
    params: int  # at 1000 classes; the tests build the model and compare
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
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))


@dataclass(frozen=True)
class DataDefaults:
    """What a model expects of its input: the data config takes these unless overridden."""

    resolution: int
    crop_ratio: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


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


def create_model(name: str, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Build a catalogue model (or `timm/<name>` for any timm model) through `timm.create_model`.

    kwargs go to the model's constructor (e.g. `drop_rate`, `features_only=True`) over the entry's own defaults.
    """
    timm_name, defaults = _timm_name(name)
    return timm.create_model(
        timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **{**defaults, **kwargs}
    )


def data_defaults(name: str) -> DataDefaults:
    """Input resolution, crop ratio and interpolation from the paper (catalogue) or timm, mean/std from timm."""
    timm_name, _ = _timm_name(name)
    cfg = timm.models.get_pretrained_cfg(timm_name)
    mean, std = tuple(cfg.mean), tuple(cfg.std)
    if name.startswith(TIMM_PREFIX):
        return DataDefaults(cfg.input_size[-1], cfg.crop_pct, cfg.interpolation or "bilinear", mean, std)
    entry = get_entry(name)
    return DataDefaults(entry.resolution, entry.crop_ratio, entry.interpolation, mean, std)
