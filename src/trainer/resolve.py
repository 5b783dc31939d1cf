"""The run's config, resolved once before anything is built, and read-only from then on.

`resolve_config` fills every value that depends on the model, the machine or the run and that the composed config
leaves open, then freezes the result:
- `run_dir`: the run's directory (Hydra's output directory when run through Hydra; `train.output_dir`);
- `data.resolution`, `crop_ratio`, `interpolation`, `mean`, `std` left null: the model's (the paper's resolution and
  crop, timm's normalisation; `trainer.models.data_defaults`);
- `model.channels_last` and `compile` left null: on when training on CUDA (`engine.fast_paths.resolve_switch`);
- every interpolation (`${now:...}`, `${oc.env:...}`, resolvers) replaced by its value;
- a config saved before the augmentation keys moved (`data.train_scale`, `train_ratio`, `hflip`): those keys are
  moved to the augment group, so older checkpoints still evaluate.

What `train.py ... print_config=true` prints is this config; the run writes the same to `config.yaml` and into its
checkpoints. The builders (`trainer.builders`) accept a config that was not resolved (scripts, benchmarks, tests
build pieces on their own) and resolve a copy; they never write into the config they are given.
"""

from __future__ import annotations

import copy

from omegaconf import DictConfig, OmegaConf, open_dict

from trainer.engine.fast_paths import resolve_switch
from trainer.models import data_defaults

_OLD_AUGMENT_KEYS = {"train_scale": "scale", "train_ratio": "ratio", "hflip": "hflip"}
MODEL_DEFAULTED = ("resolution", "crop_ratio", "interpolation", "mean", "std")


def resolve_config(cfg: DictConfig, run_dir: str | None = None) -> DictConfig:
    """A resolved, read-only copy of `cfg` (the caller's config is not changed); `cfg` itself if already resolved.
    `run_dir` given: the run's directory, in place of `cfg.run_dir`."""
    if is_resolved(cfg):
        return cfg
    cfg = copy.deepcopy(cfg)
    _move_augment_keys(cfg)
    if run_dir is not None:
        cfg.run_dir = str(run_dir)
    if cfg.get("model") is not None:
        if cfg.get("data") is not None:
            defaults = data_defaults(cfg.model.name, cfg.model.get("kwargs"))
            for key in MODEL_DEFAULTED:
                if cfg.data.get(key) is None:
                    value = getattr(defaults, key)
                    cfg.data[key] = list(value) if isinstance(value, tuple) else value
        if "channels_last" in cfg.model:
            cfg.model.channels_last = resolve_switch(cfg.model.channels_last, cfg)
    if "compile" in cfg:
        cfg.compile = resolve_switch(cfg.compile, cfg)
    OmegaConf.resolve(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _move_augment_keys(cfg: DictConfig) -> None:
    """A config saved before the augmentation keys moved to the augment group (a checkpoint's, for evaluate.py):
    `data.train_scale`, `data.train_ratio`, `data.hflip` become `augment.scale`, `ratio`, `hflip` where the augment
    group left those null (null then meant "the data set's")."""
    data = cfg.get("data")
    if data is None or not any(key in data for key in _OLD_AUGMENT_KEYS):
        return
    if cfg.get("augment") is None:
        cfg.augment = {}
    with open_dict(cfg.data), open_dict(cfg.augment):
        for old, new in _OLD_AUGMENT_KEYS.items():
            if old in cfg.data:
                value = cfg.data.pop(old)
                if cfg.augment.get(new) is None:
                    cfg.augment[new] = value


def is_resolved(cfg: DictConfig) -> bool:
    return bool(OmegaConf.is_readonly(cfg))
