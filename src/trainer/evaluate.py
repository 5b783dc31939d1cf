"""evaluate(cfg): rebuild model and data from the config saved in a checkpoint and measure top-1/top-5 under a test-time
protocol (centre crop, 10-crop, dense multi-scale, GoogLeNet's 144 crops: trainer.eval), through Lightning's
`Trainer.test` on one device or several (each process scores its exact share of the images; the sums are added).

The config is resolved once (`eval_config`: the checkpoint's, the command line's keys over it, the machine's devices)
and read only from then on."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from trainer.builders import build_datamodule, build_model, build_trainer
from trainer.compat import quiet_known_noise
from trainer.engine.distributed import check_devices
from trainer.engine.loggers import announce
from trainer.errors import CheckpointError, ConfigError
from trainer.eval import Protocol, fully_convolutional
from trainer.eval.module import EvaluationModule
from trainer.eval.protocols import collate_views
from trainer.io import has_ema, model_weights, read_checkpoint, select_weights, sha256_of
from trainer.models.catalogue import TIMM_PREFIX, get_entry
from trainer.resolve import resolve_config
from trainer.train import write_json

_EVAL_ONLY = ("ckpt", "eval", "hydra", "run_dir")
MAX_HEATMAP_CLASSES = 100


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


def _this_machine(trainer: Mapping[str, Any]) -> dict[str, Any]:
    """Where a checkpoint is evaluated, unless the command line says otherwise: one device (the run's device count,
    nodes and strategy are the training machine's), a GPU where the run used one (or `auto`) and this machine has one,
    else the CPU, which evaluates in full precision (mixed precision is the GPU's)."""
    accelerator = str(trainer.get("accelerator", "auto"))
    gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    precision = str(trainer.get("precision", "32-true"))
    return {
        "accelerator": ("gpu" if accelerator == "auto" else accelerator) if gpu else "cpu",
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",
        "sync_batchnorm": False,  # batch norm evaluates with its running statistics
        "precision": precision if gpu or "16" not in precision else "32-true",
    }


def eval_config(cfg: DictConfig, checkpoint: Mapping[str, Any], overrides: Sequence[str]) -> DictConfig:
    """The config an evaluation runs with, resolved and read-only (trainer/resolve.py): the checkpoint's training
    config, on this machine (`_this_machine`), with the command line's keys over it (`overrides`, keys of `cfg`: a
    group choice replaces the whole group), `eval.split` as the data's val split, `eval.resolution` and
    `eval.crop_ratio` as the data's, no `init_from` weights (the checkpoint's are evaluated), no callbacks or loggers
    (evaluation writes its results only); `ckpt`, `eval` and `run_dir` (the checkpoint's run directory) are `cfg`'s."""
    saved = OmegaConf.create(checkpoint["trainer_config"])
    saved.trainer.update(_this_machine(saved.trainer))
    apply_overrides(saved, cfg, overrides)
    saved.data.val_split = cfg.eval.split
    for key in ("resolution", "crop_ratio"):
        if cfg.eval.get(key) is not None:
            saved.data[key] = cfg.eval[key]
    saved.model.init_from = None
    saved.callbacks = None
    saved.logger = None
    saved.ckpt = str(cfg.ckpt)
    saved.eval = OmegaConf.to_container(cfg.eval, resolve=True)
    return resolve_config(saved, run_dir=str(Path(cfg.ckpt).resolve().parent.parent))


def trained_with_flips(train_cfg: DictConfig) -> bool:
    """Whether training mirrored images (augment.hflip): the multi-view protocols add mirrored views only then (the
    digits sample set never flips: a mirrored digit is not that digit)."""
    hflip = (train_cfg.get("augment") or {}).get("hflip")
    return hflip is None or float(hflip) > 0  # unknown: the papers' protocols, with mirrors


def eval_protocol(cfg: DictConfig) -> Protocol:
    """The protocol `cfg.eval` asks for, at the data's (possibly overridden) resolution, checked against the model's
    minimum."""
    scales = cfg.eval.get("scales")
    protocol = Protocol(
        str(cfg.eval.get("protocol") or "center"),
        resolution=int(cfg.data.resolution),
        crop_ratio=float(cfg.data.crop_ratio),
        interpolation=str(cfg.data.interpolation),
        mean=tuple(cfg.data.mean),
        std=tuple(cfg.data.std),
        scales=tuple(int(s) for s in scales) if scales else (),
        flips=trained_with_flips(cfg),
    )
    name = cfg.model.name
    smallest = None if name.startswith(TIMM_PREFIX) else get_entry(name).min_resolution
    if smallest is not None and protocol.smallest_input < smallest:
        what = f"eval.resolution={protocol.resolution}"
        if protocol.name == "multi_scale":
            what = f"eval.protocol=multi_scale gives a {protocol.smallest_input} px scale ({what})"
        raise ConfigError(f"model '{name}' needs a resolution of at least {smallest} px; {what}")
    return protocol


def confusion_files(out: Path, num_classes: int) -> list[Path]:
    """Beside the results file `out`: the confusion matrix as CSV, and as a heatmap up to 100 classes."""
    csv_path = out.with_name(out.stem + "_confusion.csv")
    return [csv_path] if num_classes > MAX_HEATMAP_CLASSES else [csv_path, out.with_name(out.stem + "_confusion.png")]


def write_confusion(confusion: torch.Tensor, classes: Sequence[str], files: Sequence[Path]) -> None:
    """The confusion matrix into `files` (confusion_files): CSV (rows: true class, columns: predicted), and the
    heatmap (rows normalised) where one is asked for."""
    with open(files[0], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true\\predicted", *classes])
        for name, row in zip(classes, confusion.tolist(), strict=True):
            writer.writerow([name, *row])
    if len(files) < 2:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = min(4 + 0.12 * len(classes), 16)
    fig, ax = plt.subplots(figsize=(side, side))
    rows = confusion.sum(1, keepdim=True).clamp_min(1)
    image = ax.imshow((confusion / rows).numpy(), cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(classes))
    labels = classes if len(classes) <= 30 else [""] * len(classes)
    ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(files[1], dpi=100)
    plt.close(fig)


def _check_classes(ckpt: Path, saved: Sequence[str], classes: Sequence[str], root: str) -> None:
    if saved and len(classes) != len(saved):
        raise CheckpointError(f"checkpoint '{ckpt}' has {len(saved)} classes but data '{root}' has {len(classes)}")
    if saved and list(classes) != list(saved):
        raise CheckpointError(
            f"checkpoint '{ckpt}' was trained on other class names than data "
            f"'{root}' holds (e.g. '{saved[0]}' vs '{classes[0]}')"
        )


def _models(
    cfg: DictConfig, checkpoint: Mapping[str, Any], weights: Sequence[str], num_classes: int, dense: bool
) -> dict[str, nn.Module]:
    """The model of `cfg` with each of `weights` (raw, ema) of the checkpoint; fully convolutional where `dense`."""
    saved_model = checkpoint["trainer_config"]["model"]["name"]
    models: dict[str, nn.Module] = {}
    for kind in weights:
        model = build_model(cfg, num_classes=num_classes)
        weights_state = model_weights(checkpoint["state_dict"], kind)
        own = model.state_dict()
        misfit = sorted(set(own) ^ set(weights_state))
        misfit += sorted(k for k in own if k in weights_state and own[k].shape != weights_state[k].shape)
        if misfit:
            raise CheckpointError(
                f"checkpoint '{cfg.ckpt}' holds a {saved_model} that does not fit model "
                f"{cfg.model.name} with {num_classes} classes (first mismatch: {misfit[0]})"
            )
        model.load_state_dict(weights_state)
        models[kind] = fully_convolutional(model) if dense else model
    return models


def evaluate(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate `cfg.ckpt` on its data's `cfg.eval.split` under `cfg.eval.protocol`; returns (and, on rank 0, writes)
    top-1/top-5, loss, per-class accuracy and the confusion matrix.

    `overrides` are the command-line overrides to apply over the checkpoint's config (default: Hydra's). With
    `trainer.devices` (and `trainer.num_nodes`) above 1, Lightning starts a process per device; each reads its share of
    the images, and the results are those of one process reading them all.
    """
    ckpt = Path(cfg.ckpt)
    checkpoint = read_checkpoint(ckpt)
    cfg = eval_config(cfg, checkpoint, _command_line_overrides() if overrides is None else overrides)
    # null: raw and, where the checkpoint holds them, ema beside it; the first is reported as top1 and per class
    weights = select_weights(cfg.eval.get("weights"), has_ema(checkpoint["state_dict"]), key="eval.weights", path=ckpt)

    datamodule = build_datamodule(cfg)
    datamodule.prepare_eval(cfg.eval.split)
    classes = datamodule.classes
    _check_classes(ckpt, checkpoint.get("class_names") or [], classes, cfg.data.root)
    protocol = eval_protocol(cfg)
    models = _models(cfg, checkpoint, weights, len(classes), dense=protocol.name == "multi_scale")

    check_devices(cfg)
    trainer = build_trainer(cfg, enable_checkpointing=False, logger=False, use_distributed_sampler=False)
    datamodule.trainer = trainer  # the evaluation loader reads this process's share
    transform = None if protocol.name == "center" else protocol.transform()  # None: the data module's own pipeline
    module = EvaluationModule(
        models,
        protocol,
        len(classes),
        lambda: datamodule.eval_dataloader(transform, protocol=protocol.name, collate_fn=collate_views),
        channels_last=bool(cfg.model.channels_last),
        views_per_forward=cfg.eval.get("views_per_forward"),
    )
    with quiet_known_noise():
        trainer.test(module, verbose=False)

    stem = f"eval_{protocol.name}" if cfg.eval.split == "val" else f"eval_{cfg.eval.split}_{protocol.name}"
    out = Path(cfg.eval.out) if cfg.eval.out else Path(cfg.run_dir) / f"{stem}.json"
    files = confusion_files(out, len(classes))
    primary = module.results[weights[0]]
    confusion = primary["confusion"]
    per_class = (confusion.diag() / confusion.sum(1).clamp_min(1)).tolist()
    images = primary["images"]
    results: dict[str, Any] = {
        "ckpt": str(ckpt),
        "ckpt_sha256": sha256_of(ckpt),
        "model": cfg.model.name,
        "split": cfg.eval.split,
        "protocol": protocol.name,
        "views_per_image": protocol.views_per_image,
        "resolution": protocol.resolution,
        "crop_ratio": protocol.crop_ratio,
        "scales": protocol.pixel_scales if protocol.scales else None,
        "weights": weights[0],
        "top1": primary["top1"],
        "top5": primary["top5"],
        "loss": primary["loss"],
        "images": images,
        "images_per_sec": images / module.seconds if images else None,
        "per_class_top1": {name: 100 * acc for name, acc in zip(classes, per_class, strict=True)},
        "confusion": [str(p) for p in files],
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
    }
    if "ema" in module.results and weights[0] != "ema":  # trained with ema.decay: the averaged weights too
        ema = module.results["ema"]
        results.update(top1_ema=ema["top1"], top5_ema=ema["top5"], loss_ema=ema["loss"])
    if trainer.is_global_zero:  # every process holds the totals; one writes them
        out.parent.mkdir(parents=True, exist_ok=True)
        write_confusion(confusion, classes, files)
        write_json(out, results)
        announce(
            f"{ckpt}: {cfg.eval.split} {protocol.name} ({protocol.views_per_image} views) top-1 "
            f"{results['top1']:.2f}%  top-5 {results['top5']:.2f}%\nresults: {out}"
        )
    return results
