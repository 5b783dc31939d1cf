"""Hydra wiring: every catalogue model (and any timm model, as `timm/<name>`) is a `model=` option.

There is no YAML file per model: the catalogue is the one source of truth, registered into Hydra's ConfigStore.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from trainer.models import TIMM_PREFIX, list_models

_TIMM_CHOICE = re.compile(re.escape(TIMM_PREFIX) + r"([\w.\-]+)")


@dataclass
class ModelConfig:
    """`model.*`: which backbone and how to build it. A typo in a key fails loudly (structured config)."""

    name: str = MISSING  # a catalogue name, or timm/<any timm model name>
    init_from: str | None = None  # a state_dict or checkpoint file to start from (keys mapped, mismatches reported)
    channels_last: bool | None = None  # channels_last memory format for model and inputs (null: on with CUDA)
    drop_rate: float | None = None  # classifier dropout (null: the model's default)
    drop_path_rate: float | None = None  # stochastic depth: the deepest block's drop rate (> 0 builds drop-path)
    drop_path_mode: str = "row"  # row: timm's DropPath (per sample); batch: the paper's (whole batch, p_l rule)
    kwargs: dict[str, Any] = field(default_factory=dict)  # more constructor arguments, e.g. {groups: 1}


def _cifar_classes(dataset: str, label_type: str) -> int | None:
    from trainer.data.cifar import num_classes  # imported when a CIFAR config is resolved, not at every start

    return num_classes(dataset, label_type)


def register_configs(overrides: Iterable[str] = ()) -> None:
    """Store `model/<name>` for each catalogue entry, and `model/timm/<name>` for each timm model named in
    `overrides` (all ~1,400 timm names would cost most of a second at every start). Idempotent."""
    # evaluate.py's run directory (its log) is the checkpoint's run directory, where its results go too
    OmegaConf.register_new_resolver("run_dir_of", lambda ckpt: str(Path(ckpt).resolve().parent.parent), replace=True)
    # data=cifar10 / cifar100: data.num_classes follows data.label_type (CIFAR-100's coarse labels: 20 classes)
    OmegaConf.register_new_resolver("cifar_classes", _cifar_classes, replace=True)
    cs = ConfigStore.instance()
    for name in list_models():
        cs.store(group="model", name=name, node=ModelConfig(name=name))
    for override in overrides:
        for name in _TIMM_CHOICE.findall(override):
            if timm.is_model(name):
                cs.store(group="model/timm", name=name, node=ModelConfig(name=TIMM_PREFIX + name), package="model")
