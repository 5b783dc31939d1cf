"""evaluate(cfg): rebuild model and data from the config saved in a checkpoint and measure top-1/top-5."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from trainer.builders import build_datamodule, build_model, build_module
from trainer.errors import CheckpointError
from trainer.train import write_json

_EVAL_ONLY = ("ckpt", "eval", "hydra", "run_dir")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt '{path}' does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"cannot read checkpoint '{path}': {type(e).__name__}: {reason}") from None
    if not isinstance(checkpoint, dict) or "trainer_config" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"'{path}' is not a checkpoint written by train.py (no saved config)")
    return checkpoint


def _command_line_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def apply_overrides(saved: DictConfig, requested: DictConfig, overrides: Sequence[str]) -> None:
    """Apply to the saved training config each key the user gave (a group choice replaces the whole group)."""
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key.split(".")[0] in _EVAL_ONLY:
            continue
        value = OmegaConf.select(requested, key)
        OmegaConf.update(saved, key, value, merge=False, force_add=True)


def _model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}


def evaluate(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate `cfg.ckpt` on its data's `cfg.eval.split`; returns (and writes) top-1/top-5.

    `overrides` are the command-line overrides to apply over the checkpoint's config (default: Hydra's).
    """
    ckpt = Path(cfg.ckpt)
    checkpoint = load_checkpoint(ckpt)
    train_cfg = OmegaConf.create(checkpoint["trainer_config"])
    apply_overrides(train_cfg, cfg, _command_line_overrides() if overrides is None else overrides)
    train_cfg.data.val_split = cfg.eval.split
    train_cfg.model.init_from = None  # the checkpoint's weights are the ones to evaluate

    saved_classes = checkpoint.get("class_names") or []
    saved_model = checkpoint["trainer_config"]["model"]["name"]
    datamodule = build_datamodule(train_cfg)
    datamodule.prepare_data()
    classes = datamodule.classes
    if saved_classes and len(classes) != len(saved_classes):
        raise CheckpointError(
            f"checkpoint '{ckpt}' has {len(saved_classes)} classes but data '{train_cfg.data.root}' has {len(classes)}"
        )
    if saved_classes and list(classes) != list(saved_classes):
        raise CheckpointError(
            f"checkpoint '{ckpt}' was trained on other class names than data "
            f"'{train_cfg.data.root}' holds (e.g. '{saved_classes[0]}' vs '{classes[0]}')"
        )

    model = build_model(train_cfg, num_classes=len(classes))
    state = _model_state(checkpoint)
    own = model.state_dict()
    misfit = sorted(set(own) ^ set(state)) + sorted(k for k in own if k in state and own[k].shape != state[k].shape)
    if misfit:
        raise CheckpointError(
            f"checkpoint '{ckpt}' holds a {saved_model} that does not fit model "
            f"{train_cfg.model.name} with {len(classes)} classes (first mismatch: {misfit[0]})"
        )
    model.load_state_dict(state)

    module = build_module(train_cfg, model, classes)
    trainer_kwargs = dict(
        logger=False,
        callbacks=[],
        devices=1,
        num_nodes=1,
        strategy="auto",
        enable_progress_bar=bool(cfg.trainer.enable_progress_bar),
    )
    trainer: L.Trainer = instantiate(train_cfg.trainer, **trainer_kwargs)
    start = time.perf_counter()
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    elapsed = time.perf_counter() - start
    images = len(datamodule.val_set) if getattr(datamodule, "val_set", None) is not None else None
    results = {
        "ckpt": str(ckpt),
        "model": train_cfg.model.name,
        "split": cfg.eval.split,
        "top1": 100 * float(metrics["val/top1"]),
        "top5": 100 * float(metrics["val/top5"]),
        "loss": float(metrics["val/loss"]),
        "images": images,
        "images_per_sec": images / elapsed if images else None,
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
    }
    if "val_ema/top1" in metrics:  # trained with ema.decay: the averaged weights too
        results.update(top1_ema=100 * float(metrics["val_ema/top1"]), top5_ema=100 * float(metrics["val_ema/top5"]))
    out = Path(cfg.eval.out) if cfg.eval.out else ckpt.resolve().parent.parent / f"eval_{cfg.eval.split}.json"
    write_json(out, results)
    print(
        f"{ckpt}: {cfg.eval.split} top-1 {results['top1']:.2f}%  top-5 {results['top5']:.2f}%\nresults: {out}",
        flush=True,
    )
    return results
