"""evaluate(cfg): rebuild model and data from the config saved in a checkpoint and measure top-1/top-5 under a test-time
protocol (centre crop, 10-crop, dense multi-scale, GoogLeNet's 144 crops: trainer.eval)."""

from __future__ import annotations

import contextlib
import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from trainer.builders import build_datamodule, build_model
from trainer.data import FFCVDataModule
from trainer.data.beton import sha256_of
from trainer.engine.loggers import announce
from trainer.errors import CheckpointError, ConfigError
from trainer.eval import Protocol, fully_convolutional, predict
from trainer.eval.protocols import collate_views, loss_of
from trainer.models.catalogue import TIMM_PREFIX, get_entry
from trainer.train import write_json

_EVAL_ONLY = ("ckpt", "eval", "hydra", "run_dir")
WEIGHTS = (None, "raw", "ema")
MAX_HEATMAP_CLASSES = 100


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


def _model_state(checkpoint: dict[str, Any], prefix: str = "model.") -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def _weights_to_evaluate(cfg: DictConfig, ckpt: Path, has_ema: bool) -> list[str]:
    """raw and/or ema; the first is the one reported as top1/top5 and in the per-class results."""
    requested = cfg.eval.get("weights")
    if requested not in WEIGHTS:
        raise ConfigError(f"eval.weights='{requested}' is not one of ema, raw (or null: raw, and ema beside it)")
    if requested == "ema" and not has_ema:
        raise CheckpointError(f"eval.weights=ema: checkpoint '{ckpt}' has no EMA weights (trained without ema.decay)")
    if requested is None:  # both where there are both, raw first (top1 / top1_ema)
        return ["raw", "ema"] if has_ema else ["raw"]
    return [requested]


def trained_with_flips(train_cfg: DictConfig) -> bool:
    """Whether training mirrored images (augment.hflip, else the data set's data.hflip): the multi-view protocols
    add mirrored views only then (the digits sample set never flips: a mirrored digit is not that digit)."""
    augment = train_cfg.get("augment") or {}
    hflip = augment.get("hflip")
    if hflip is None:
        hflip = (train_cfg.get("data") or {}).get("hflip")
    return hflip is None or float(hflip) > 0  # unknown: the papers' protocols, with mirrors


def _protocol(cfg: DictConfig, train_cfg: DictConfig) -> Protocol:
    """The protocol asked for, at the (possibly overridden) model resolution, checked against the model's minimum."""
    scales = cfg.eval.get("scales")
    protocol = Protocol(
        str(cfg.eval.get("protocol") or "center"),
        resolution=int(train_cfg.data.resolution),
        crop_ratio=float(train_cfg.data.crop_ratio),
        interpolation=str(train_cfg.data.interpolation),
        mean=tuple(train_cfg.data.mean),
        std=tuple(train_cfg.data.std),
        scales=tuple(int(s) for s in scales) if scales else (),
        flips=trained_with_flips(train_cfg),
    )
    name = train_cfg.model.name
    smallest = None if name.startswith(TIMM_PREFIX) else get_entry(name).min_resolution
    if smallest is not None and protocol.smallest_input < smallest:
        what = f"eval.resolution={protocol.resolution}"
        if protocol.name == "multi_scale":
            what = f"eval.protocol=multi_scale gives a {protocol.smallest_input} px scale ({what})"
        raise ConfigError(f"model '{name}' needs a resolution of at least {smallest} px; {what}")
    return protocol


def _device_and_autocast(train_cfg: DictConfig) -> tuple[torch.device, torch.dtype | None]:
    accelerator = str(train_cfg.trainer.get("accelerator", "auto"))
    cuda = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    precision = str(train_cfg.trainer.get("precision", "32"))
    dtype = torch.bfloat16 if "bf16" in precision else torch.float16 if precision.startswith("16") else None
    return device, dtype if cuda else None


def _to(images: Any, device: torch.device, memory_format: torch.memory_format) -> Any:
    if isinstance(images, torch.Tensor):
        fmt = memory_format if images.ndim == 4 else torch.contiguous_format
        return images.to(device, non_blocking=True).contiguous(memory_format=fmt)
    return [_to(part, device, memory_format) for part in images]


def _accuracy(num_classes: int, device: torch.device) -> dict[str, MulticlassAccuracy]:
    # the metrics validation logs (ClassificationModule), so centre-crop numbers equal the training run's
    return {
        "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro").to(device),
        "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro").to(device),
    }


def run_protocol(
    protocol: Protocol,
    models: dict[str, nn.Module],
    loader: DataLoader,
    num_classes: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    views_per_forward: int | None = None,
) -> dict[str, Any]:
    """Score every batch of `loader` with each model under `protocol`: top-1/top-5/loss per model, and the
    confusion matrix (rows: true class) of the first."""
    metrics = {name: _accuracy(num_classes, device) for name in models}
    losses = dict.fromkeys(models, 0.0)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    images_seen = 0
    for model in models.values():
        model.eval()
    start = time.perf_counter()
    autocast = torch.autocast(device.type, autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for batch in loader:
            if batch is None:  # every image of the batch was undecodable and skipped
                continue
            images, targets = _to(batch[0], device, memory_format), batch[1].to(device)
            images_seen += len(targets)
            for index, (name, model) in enumerate(models.items()):
                scores, is_prob = predict(protocol.name, model, images, views_per_forward, protocol.flips)
                losses[name] += float(loss_of(scores, is_prob, targets))
                for metric in metrics[name].values():
                    metric.update(scores, targets)
                if index == 0:
                    pairs = targets * num_classes + scores.argmax(-1)
                    confusion += torch.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "images": images_seen,
        "seconds": elapsed,
        "metrics": {
            name: {
                "top1": 100 * float(m["top1"].compute()),
                "top5": 100 * float(m["top5"].compute()),
                "loss": losses[name] / max(images_seen, 1),
            }
            for name, m in metrics.items()
        },
        "confusion": confusion.cpu(),
    }


def write_confusion(confusion: torch.Tensor, classes: Sequence[str], csv_path: Path, png_path: Path) -> list[Path]:
    """The confusion matrix as CSV (rows: true class, columns: predicted), and as a heatmap up to 100 classes."""
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true\\predicted", *classes])
        for name, row in zip(classes, confusion.tolist(), strict=True):
            writer.writerow([name, *row])
    if len(classes) > MAX_HEATMAP_CLASSES:
        return [csv_path]
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
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return [csv_path, png_path]


def evaluate(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate `cfg.ckpt` on its data's `cfg.eval.split` under `cfg.eval.protocol`; returns (and writes) top-1/top-5,
    loss, per-class accuracy and the confusion matrix.

    `overrides` are the command-line overrides to apply over the checkpoint's config (default: Hydra's).
    """
    ckpt = Path(cfg.ckpt)
    checkpoint = load_checkpoint(ckpt)
    train_cfg = OmegaConf.create(checkpoint["trainer_config"])
    apply_overrides(train_cfg, cfg, _command_line_overrides() if overrides is None else overrides)
    train_cfg.data.val_split = cfg.eval.split
    train_cfg.model.init_from = None  # the checkpoint's weights are the ones to evaluate
    for key in ("resolution", "crop_ratio"):
        if cfg.eval.get(key) is not None:
            train_cfg.data[key] = cfg.eval[key]
    state = _model_state(checkpoint)
    ema_state = _model_state(checkpoint, "ema.module.")
    weights = _weights_to_evaluate(cfg, ckpt, bool(ema_state))

    saved_classes = checkpoint.get("class_names") or []
    saved_model = checkpoint["trainer_config"]["model"]["name"]
    datamodule = build_datamodule(train_cfg)
    if isinstance(datamodule, FFCVDataModule) and cfg.eval.split != "val":
        if cfg.eval.split != datamodule.train_split:
            raise ConfigError(
                f"eval.split={cfg.eval.split}: FFCV data has a train and a val file; set data.val_beton=<file>"
            )
        datamodule.val_beton = datamodule.train_beton
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
    protocol = _protocol(cfg, train_cfg)

    models: dict[str, nn.Module] = {}
    for kind in weights:
        model = build_model(train_cfg, num_classes=len(classes))
        weights_state = state if kind == "raw" else ema_state
        own = model.state_dict()
        misfit = sorted(set(own) ^ set(weights_state))
        misfit += sorted(k for k in own if k in weights_state and own[k].shape != weights_state[k].shape)
        if misfit:
            raise CheckpointError(
                f"checkpoint '{ckpt}' holds a {saved_model} that does not fit model "
                f"{train_cfg.model.name} with {len(classes)} classes (first mismatch: {misfit[0]})"
            )
        model.load_state_dict(weights_state)
        models[kind] = fully_convolutional(model) if protocol.name == "multi_scale" else model

    device, autocast_dtype = _device_and_autocast(train_cfg)
    models = {kind: model.to(device) for kind, model in models.items()}
    if isinstance(datamodule, FFCVDataModule) and protocol.name == "center":
        # the FFCV validation pipeline itself (the .beton named by data.val_beton), on the evaluation device
        datamodule.loader_device = device
        loader = datamodule.val_dataloader()
    else:
        if isinstance(datamodule, FFCVDataModule) and not Path(datamodule.root, cfg.eval.split).is_dir():
            raise ConfigError(
                f"eval.protocol={protocol.name} reads the image folders, and data.root '{datamodule.root}' has no "
                f"'{cfg.eval.split}' folder (the FFCV files serve eval.protocol=center)"
            )
        transform = datamodule.val_transform() if protocol.name == "center" else protocol.transform()
        dataset = datamodule._dataset(cfg.eval.split, transform)
        loader = DataLoader(
            dataset,
            batch_size=datamodule.per_device_batch_size,
            shuffle=False,
            num_workers=datamodule.num_workers,
            pin_memory=device.type == "cuda",
            collate_fn=collate_views,
        )
    memory_format = torch.channels_last if train_cfg.model.channels_last else torch.contiguous_format
    measured = run_protocol(
        protocol,
        models,
        loader,
        len(classes),
        device,
        autocast_dtype,
        memory_format,
        cfg.eval.get("views_per_forward"),
    )

    run_dir = ckpt.resolve().parent.parent
    stem = f"eval_{protocol.name}" if cfg.eval.split == "val" else f"eval_{cfg.eval.split}_{protocol.name}"
    out = Path(cfg.eval.out) if cfg.eval.out else run_dir / f"{stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    confusion = measured["confusion"]
    per_class = (confusion.diag() / confusion.sum(1).clamp_min(1)).tolist()
    outputs = write_confusion(
        confusion, classes, out.with_name(out.stem + "_confusion.csv"), out.with_name(out.stem + "_confusion.png")
    )
    primary = measured["metrics"][weights[0]]
    images = measured["images"]
    results: dict[str, Any] = {
        "ckpt": str(ckpt),
        "ckpt_sha256": sha256_of(ckpt),
        "model": train_cfg.model.name,
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
        "images_per_sec": images / measured["seconds"] if images else None,
        "per_class_top1": {name: 100 * acc for name, acc in zip(classes, per_class, strict=True)},
        "confusion": [str(p) for p in outputs],
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
    }
    if "ema" in measured["metrics"] and weights[0] != "ema":  # trained with ema.decay: the averaged weights too
        ema = measured["metrics"]["ema"]
        results.update(top1_ema=ema["top1"], top5_ema=ema["top5"], loss_ema=ema["loss"])
    write_json(out, results)
    if protocol.name == "center" and not cfg.eval.out:  # the name evaluate.py wrote before protocols existed
        write_json(run_dir / f"eval_{cfg.eval.split}.json", results)
    announce(
        f"{ckpt}: {cfg.eval.split} {protocol.name} ({protocol.views_per_image} views) top-1 {results['top1']:.2f}%  "
        f"top-5 {results['top5']:.2f}%\nresults: {out}"
    )
    return results
