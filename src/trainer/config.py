"""Hydra wiring: every catalogue model (and any timm model, as `timm/<name>`) is a `model=` option.

There is no YAML file per model: the catalogue is the one source of truth, registered into Hydra's ConfigStore; timm's
models are served on demand by the config source in `hydra_plugins.trainer_models`, wherever a config is composed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from trainer.models import list_models

# keys that moved to another group: a command line that still names the old one is told the new one (trainer/cli.py)
MOVED_KEYS = {"data.train_scale": "augment.scale", "data.train_ratio": "augment.ratio", "data.hflip": "augment.hflip"}


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


@dataclass
class ExportConfig:
    """The types of scripts/export.py's options (conf/export.yaml holds their values): overwrite=maybe fails."""

    ckpt: str = MISSING
    out: str = MISSING
    overwrite: bool = MISSING
    weights: str | None = MISSING
    license: str = MISSING


@dataclass
class PublishConfig:
    """The types of scripts/publish.py's options (conf/publish.yaml holds their values)."""

    ckpt: str = MISSING
    repo_id: str = MISSING
    private: bool = MISSING
    dry_run: bool = MISSING
    out: str | None = MISSING
    overwrite: bool = MISSING
    weights: str | None = MISSING
    license: str = MISSING


def _cifar_classes(dataset: str, label_type: str) -> int | None:
    from trainer.data.cifar import num_classes  # imported when a CIFAR config is resolved, not at every start

    return num_classes(dataset, label_type)


def register_configs() -> None:
    """Store `model/<name>` for each catalogue entry, the resolvers and the scripts' schemas. Idempotent. (`timm/<name>`
    options need no registration: hydra_plugins/trainer_models answers for them wherever Hydra composes.)"""
    # evaluate.py's run directory (its log) is the checkpoint's run directory, where its results go too
    OmegaConf.register_new_resolver("run_dir_of", lambda ckpt: str(Path(ckpt).resolve().parent.parent), replace=True)
    # data=cifar10 / cifar100: data.num_classes follows data.label_type (CIFAR-100's coarse labels: 20 classes)
    OmegaConf.register_new_resolver("cifar_classes", _cifar_classes, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="publish_schema", node=PublishConfig)
    for name in list_models():
        cs.store(group="model", name=name, node=ModelConfig(name=name))
