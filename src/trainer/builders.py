"""From config to objects; one place that both train() and evaluate() build with."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.nn as nn
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

from trainer.compat import quiet_known_noise
from trainer.engine import AtomicCheckpointIO, ClassificationModule, scale_lr
from trainer.engine.distributed import cluster_plugins
from trainer.engine.fast_paths import compile_model
from trainer.engine.interrupt import DeferredInterrupt
from trainer.errors import ConfigError, UserError
from trainer.models import create_model, get_entry, load_weights
from trainer.models.catalogue import TIMM_PREFIX, check_resolution
from trainer.models.probe import SEARCH_LIMIT, meta_twin, smallest_input, training_outputs
from trainer.models.regularization import (
    DROP_PATH_MODES,
    add_missing_drop_paths,
    apply_linear_decay,
    drop_path_modules,
    set_drop_path_mode,
)
from trainer.resolve import resolve_config

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    cfg = resolve_config(cfg)  # data.resolution etc. from the model where null (a copy; `cfg` is not changed)
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
    cfg = resolve_config(cfg)
    mode = cfg.model.get("drop_path_mode", "row")
    if mode not in DROP_PATH_MODES:
        raise ConfigError(f"model.drop_path_mode='{mode}' is not one of {', '.join(DROP_PATH_MODES)}")
    kwargs = model_kwargs(cfg)
    if cfg.get("data") is not None and cfg.data.get("resolution") is not None:
        try:
            check_resolution(cfg.model.name, cfg.data.resolution)
        except ConfigError:
            if not kwargs.get("aux_logits"):
                raise
            # built with auxiliary heads: name the minimum of the network as built (one retry, not two)
            smallest = smallest_training_resolution(cfg, num_classes)
            raise _aux_resolution_error(cfg.model.name, smallest, f"data.resolution={cfg.data.resolution}") from None
    try:
        model = create_model(cfg.model.name, num_classes=num_classes, **kwargs)
    except TypeError as e:  # an argument the model's constructor does not take
        raise ConfigError(f"model '{cfg.model.name}' does not accept {e}".replace("__init__() got ", "")) from None
    if mode == "batch":
        _batch_stochastic_depth(model, cfg.model.name, cfg.model.drop_path_rate)
    if cfg.model.init_from:
        rank_zero_info(load_weights(model, cfg.model.init_from).summary())
    if cfg.model.channels_last:  # null in the composed config: on when training on CUDA (trainer/resolve.py)
        model = model.to(memory_format=torch.channels_last)
    return model


def model_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The constructor arguments `cfg.model` gives the backbone."""
    kwargs: dict[str, Any] = dict(cfg.model.kwargs)
    for key in ("drop_rate", "drop_path_rate"):
        if cfg.model.get(key) is not None:
            kwargs[key] = cfg.model[key]
    return kwargs


def training_resolution(cfg: DictConfig) -> int:
    """The smallest input training will feed: data.resolution, or progressive resizing's start where lower."""
    resizing = (cfg.get("callbacks") or {}).get("progressive_resizing")
    low = resizing.get("min_res") if resizing else None
    return min(int(cfg.data.resolution), int(low)) if low else int(cfg.data.resolution)


def smallest_training_resolution(cfg: DictConfig, num_classes: int, twin: nn.Module | None = None) -> int:
    """The smallest input the network `cfg.model` builds accepts in training: the catalogue's minimum, or more
    where the network as built (auxiliary heads running) needs more (probed on a meta-device twin)."""
    name = cfg.model.name
    low = 1 if name.startswith(TIMM_PREFIX) else get_entry(name).min_resolution
    twin = twin if twin is not None else meta_twin(name, num_classes, **model_kwargs(cfg))
    smallest = smallest_input(lambda r: isinstance(training_outputs(twin, r), int), low)
    if smallest is None:
        raise ConfigError(f"model '{name}' as built accepts no input size up to {SEARCH_LIMIT} px in training")
    return smallest


def _aux_resolution_error(name: str, smallest: int, given: str) -> ConfigError:
    return ConfigError(
        f"model '{name}' with its auxiliary heads (they run in training) needs a resolution of at least {smallest} "
        f"px; {given}; raise data.resolution, or build it without them: +model.kwargs.aux_logits=false"
    )


def check_aux_heads(cfg: DictConfig, model: nn.Module, num_classes: int) -> None:
    """At start, for a model with auxiliary heads: the network as built accepts the training resolution in training
    mode (heads included; the catalogue's minimum is the default build's), and `loss.aux_weights` weights its heads.
    Probed on a meta-device twin (models/probe.py): the first step would otherwise fail with a shape error."""
    if not getattr(model, "aux_logits", False):
        return  # no heads: the catalogue's min_resolution (checked in build_model) is the network's
    name, resolution = cfg.model.name, training_resolution(cfg)
    twin = meta_twin(name, num_classes, **model_kwargs(cfg))
    outputs = training_outputs(twin, resolution)
    if isinstance(outputs, str):
        smallest = smallest_training_resolution(cfg, num_classes, twin)
        raise _aux_resolution_error(name, smallest, f"training resolution {resolution} ({outputs})")
    weights = list(cfg.loss.aux_weights)
    if outputs and len(weights) not in (1, outputs):
        raise ConfigError(
            f"model '{name}' returns {outputs} auxiliary output(s) in training but loss.aux_weights has "
            f"{len(weights)} entries {weights}: weight them (loss.aux_weights=[0.3], one value for every head"
            + (f", or {outputs} values" if outputs > 1 else "")
            + "), or build it without them: +model.kwargs.aux_logits=false"
        )


def _batch_stochastic_depth(model: nn.Module, name: str, drop_path_rate: float | None) -> None:
    """The paper's stochastic depth: BatchDropPath in place of timm's DropPath, and the linear-decay rule
    p_l = 1 - (l / L)(1 - p_L), p_L = 1 - drop_path_rate, over all L residual blocks (Huang et al. 2016, Eq. 4): the
    first block, where timm builds no drop-path module (its rate 0), gets one too and can be dropped."""
    modules = drop_path_modules(model)
    if not modules:
        raise ConfigError(
            f"model.drop_path_mode=batch: model '{name}' was built without drop-path modules; "
            f"set model.drop_path_rate > 0 (the deepest block's drop rate, 1 - p_L; the paper uses 0.5)"
        )
    final_rate = drop_path_rate if drop_path_rate is not None else max(m.drop_prob for m in modules)
    set_drop_path_mode(model, "batch")
    add_missing_drop_paths(model)
    apply_linear_decay(model, 1.0 - final_rate)


def effective_lr(cfg: DictConfig) -> float:
    return scale_lr(
        cfg.optim.lr, cfg.optim.get("ref_batch_size"), cfg.data.batch_size, cfg.optim.get("lr_scaling", "none")
    )


def build_module(cfg: DictConfig, model: nn.Module, class_names: list[str]) -> ClassificationModule:
    """The LightningModule for `model` (from `build_model`); its checkpoints hold the resolved config."""
    cfg = resolve_config(cfg)  # compile and model.channels_last: null is on when training on CUDA
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
        channels_last=cfg.model.channels_last,
        config=OmegaConf.to_container(cfg, resolve=True),
        class_names=class_names,
        ema_decay=cfg.ema.decay if cfg.get("ema") else None,
        ema_warmup=bool(cfg.ema.warmup) if cfg.get("ema") else False,
        nonfinite=str(cfg.loss.get("nonfinite", "stop")),
    )
    if cfg.get("compile"):
        compile_model(module.model, cfg.model.name)  # in place, eager where compiling fails (with a warning)
    return module


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    with quiet_known_noise():  # e.g. Lightning's `srun` hint and litlogger tip (trainer/compat.py)
        return _build_trainer(cfg, **overrides)


def _build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks.append(DeferredInterrupt())  # Ctrl-C and SLURM's signal at a step's end (engine/interrupt.py)
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
    if families and family not in families and rank_zero_only.rank == 0:
        # a line in the run's log, not a Python warning with its source line
        log.warning(
            f"note: recipe '{info.name}' was written for the {', '.join(families)} family; model '{name}' is "
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
