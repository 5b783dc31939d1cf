"""From config to objects; one place that both train() and evaluate() build with."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn as nn
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from trainer.engine import AtomicCheckpointIO, ClassificationModule, scale_lr
from trainer.engine.distributed import cluster_plugins, quiet_srun_hint
from trainer.engine.fast_paths import compile_model, resolve_switch
from trainer.errors import ConfigError, UserError
from trainer.models import create_model, data_defaults, get_entry, load_weights
from trainer.models.catalogue import TIMM_PREFIX, check_resolution
from trainer.models.regularization import DROP_PATH_MODES, apply_linear_decay, drop_path_modules, set_drop_path_mode

_MODEL_DEFAULTED = ("resolution", "crop_ratio", "interpolation", "mean", "std")


def fill_data_defaults(cfg: DictConfig) -> None:
    """Set each `data.<key>` left null from the model's defaults (paper resolution and crop, timm mean/std)."""
    defaults = data_defaults(cfg.model.name, cfg.model.get("kwargs"))
    for key in _MODEL_DEFAULTED:
        if cfg.data.get(key) is None:
            value = getattr(defaults, key)
            cfg.data[key] = list(value) if isinstance(value, tuple) else value


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    fill_data_defaults(cfg)
    augment = OmegaConf.to_container(cfg.augment, resolve=True) if cfg.get("augment") else None
    try:
        return instantiate(cfg.data, _convert_="all", augment=augment)
    except InstantiationException as e:  # a data module refusing its config (e.g. ffcv missing): its own one line
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise


def build_model(cfg: DictConfig, num_classes: int) -> nn.Module:
    """The backbone for `cfg.model`, with its drop-path mode, `init_from` weights loaded and the memory format set.

    A `data.resolution` below what the model accepts fails here, before any training.
    """
    mode = cfg.model.get("drop_path_mode", "row")
    if mode not in DROP_PATH_MODES:
        raise ConfigError(f"model.drop_path_mode='{mode}' is not one of {', '.join(DROP_PATH_MODES)}")
    if cfg.get("data") is not None and cfg.data.get("resolution") is not None:
        check_resolution(cfg.model.name, cfg.data.resolution)
    kwargs: dict[str, Any] = dict(cfg.model.kwargs)
    for key in ("drop_rate", "drop_path_rate"):
        if cfg.model.get(key) is not None:
            kwargs[key] = cfg.model[key]
    try:
        model = create_model(cfg.model.name, num_classes=num_classes, **kwargs)
    except TypeError as e:  # an argument the model's constructor does not take
        raise ConfigError(f"model '{cfg.model.name}' does not accept {e}".replace("__init__() got ", "")) from None
    if mode == "batch":
        _batch_stochastic_depth(model, cfg.model.name, cfg.model.drop_path_rate)
    if cfg.model.init_from:
        rank_zero_info(load_weights(model, cfg.model.init_from).summary())
    cfg.model.channels_last = resolve_switch(cfg.model.channels_last, cfg)  # null: on when training on CUDA
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _batch_stochastic_depth(model: nn.Module, name: str, drop_path_rate: float | None) -> None:
    """The paper's stochastic depth: BatchDropPath in place of timm's DropPath, and the linear-decay rule with
    p_L = 1 - drop_path_rate over the blocks that have drop-path (timm builds none where its rate is 0)."""
    modules = drop_path_modules(model)
    if not modules:
        raise ConfigError(
            f"model.drop_path_mode=batch: model '{name}' was built without drop-path modules; "
            f"set model.drop_path_rate > 0 (the deepest block's drop rate, 1 - p_L; the paper uses 0.5)"
        )
    final_rate = drop_path_rate if drop_path_rate is not None else max(m.drop_prob for m in modules)
    set_drop_path_mode(model, "batch")
    apply_linear_decay(model, 1.0 - final_rate)


def effective_lr(cfg: DictConfig) -> float:
    return scale_lr(
        cfg.optim.lr, cfg.optim.get("ref_batch_size"), cfg.data.batch_size, cfg.optim.get("lr_scaling", "none")
    )


def build_module(cfg: DictConfig, model: nn.Module, class_names: list[str]) -> ClassificationModule:
    """The LightningModule for `model` (from `build_model`, which settles `model.channels_last`)."""
    compile_ = resolve_switch(cfg.get("compile"), cfg)  # null: on when training on CUDA
    if "compile" in cfg:
        cfg.compile = compile_  # the run's config.yaml and checkpoints record what was done
    optimizer = instantiate(cfg.optim, global_batch_size=cfg.data.batch_size)
    scheduler = instantiate(cfg.sched) if cfg.get("sched") else None
    module = ClassificationModule(
        model,
        optimizer,
        scheduler,
        num_classes=len(class_names),
        label_smoothing=cfg.loss.label_smoothing,
        aux_weights=list(cfg.loss.aux_weights),
        sched_interval=cfg.sched.interval if scheduler else "epoch",
        channels_last=resolve_switch(cfg.model.channels_last, cfg),
        config=OmegaConf.to_container(cfg, resolve=True),
        class_names=class_names,
        ema_decay=cfg.ema.decay if cfg.get("ema") else None,
        ema_warmup=bool(cfg.ema.warmup) if cfg.get("ema") else False,
    )
    if compile_:
        compile_model(module.model, cfg.model.name)  # in place, eager where compiling fails (with a warning)
    return module


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    quiet_srun_hint()  # before Lightning picks its cluster environment, and for the fit() that follows
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if not cfg.trainer.get("enable_progress_bar", True):  # trainer.enable_progress_bar=false wins
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg]
    kwargs: dict[str, Any] = dict(
        callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO(), *cluster_plugins(cfg)]
    )
    if cfg.get("run_dir"):  # where Lightning saves the SLURM requeue checkpoint (hpc_ckpt_<n>.ckpt)
        kwargs["default_root_dir"] = f"{cfg.run_dir}/checkpoints"
    kwargs.update(overrides)
    return instantiate(cfg.trainer, **kwargs)


def check_recipe(cfg: DictConfig, model: nn.Module) -> None:
    """A recipe given a model of another family: a warning naming the recipe's families (users cross recipes on
    purpose). A recipe that needs what the model lacks (auxiliary heads for loss.aux_weights, drop-path modules for
    a drop-path schedule) fails with one line naming both."""
    info = cfg.get("recipe_info")
    if not info:
        return
    name = cfg.model.name
    family = None if name.startswith(TIMM_PREFIX) else get_entry(name).family
    families = list(info.get("families") or [])
    if families and family not in families:
        rank_zero_warn(
            f"recipe '{info.name}' was written for the {', '.join(families)} family; model '{name}' is "
            f"{family or 'a timm model'}: its values are used as they are"
        )
    if cfg.loss.aux_weights and not getattr(model, "aux_logits", False):
        raise ConfigError(
            f"recipe '{info.name}' weights auxiliary heads (loss.aux_weights={list(cfg.loss.aux_weights)}) but model "
            f"'{name}' has none (built without aux_logits, or its architecture has no auxiliary classifier)"
        )
    if "drop_path" in (info.get("requires") or []) and not drop_path_modules(model):
        raise ConfigError(
            f"recipe '{info.name}' schedules drop-path but model '{name}' has no drop-path modules "
            f"(set model.drop_path_rate > 0, or use a model whose blocks have drop-path)"
        )
