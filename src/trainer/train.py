"""train(cfg): build model, data and Lightning trainer from the composed config, fit, and write the results."""

from __future__ import annotations

import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from trainer.builders import (
    build_datamodule,
    build_model,
    build_module,
    build_trainer,
    check_aux_heads,
    check_recipe,
    effective_lr,
)
from trainer.compat import quiet_known_noise
from trainer.engine import EpochThroughput
from trainer.engine.distributed import check_devices, process_rank
from trainer.engine.loggers import announce
from trainer.engine.resume import newest_readable, prune_hpc
from trainer.engine.run_dir import check_reuse, complete_message, finished_run
from trainer.engine.run_lock import RunLock
from trainer.errors import CheckpointError, ConfigError
from trainer.io import atomic_write_text
from trainer.resolve import resolve_config

RESUME_MODES = ("never", "auto")


def output_dir(cfg: DictConfig) -> Path:
    """This run's directory: Hydra's output dir when run through Hydra (sweeps included), else `run_dir`."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.run_dir)


def resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    if cfg.resume not in RESUME_MODES:
        raise ConfigError(f"resume='{cfg.resume}' is not one of {', '.join(RESUME_MODES)}")
    if cfg.ckpt_path:
        if not Path(cfg.ckpt_path).is_file():
            raise CheckpointError(f"ckpt_path '{cfg.ckpt_path}' does not exist")
        return str(cfg.ckpt_path)
    if cfg.resume == "auto":  # the newest readable of last.ckpt and the requeue checkpoints (engine/resume.py)
        newest = newest_readable(run_dir / "checkpoints")
        return str(newest) if newest else None
    return None


def check_run_dir(cfg: DictConfig, run_dir: Path) -> tuple[str | None, dict[str, Any] | None]:
    """The checkpoint to resume from, and what a finished run reached when `resume=auto` has nothing left to train
    (engine/run_dir.py); a run_dir that holds another run, without resume, is refused in one line."""
    ckpt_path = resume_path(cfg, run_dir)
    if process_rank() == 0:  # other ranks (DDP children, srun tasks) start after rank 0 has written config.yaml
        check_reuse(run_dir, cfg.resume, cfg.ckpt_path)
    finished = finished_run(cfg, ckpt_path) if ckpt_path and cfg.resume == "auto" else None
    return ckpt_path, finished


def data_source(cfg: DictConfig) -> str:
    """What the run reads: the .beton files for the FFCV loader, else the image folder."""
    if cfg.data.get("train_beton"):
        return f"{cfg.data.train_beton} + {cfg.data.val_beton}"
    return str(cfg.data.root)


def best_top1(checkpoint: Any) -> float | None:
    """The best val top-1 (%) the checkpoint callback saw; None before any validation (0.0 is a score)."""
    if checkpoint is None or checkpoint.best_model_score is None:
        return None
    return 100 * float(checkpoint.best_model_score)


def write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data`; returns (and writes to <run_dir>/results.json) the final metrics.

    The config is resolved once, first (trainer/resolve.py), and read only from then on; `print_config=true` prints it
    as the run writes it to config.yaml and its checkpoints."""
    cfg = resolve_config(cfg, run_dir=str(output_dir(cfg)))
    run_dir = Path(cfg.run_dir)
    if cfg.get("print_config") and process_rank() == 0:
        print(OmegaConf.to_yaml(cfg), end="", flush=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    ckpt_path, finished = check_run_dir(cfg, run_dir)  # before anything is written into run_dir
    if finished:  # nothing left to train: report the run as it is, write nothing
        rank_zero_info(complete_message(run_dir, finished, cfg.trainer.get("max_epochs")))
        return finished["results"] or {"epochs": finished["epochs"], "global_step": finished["global_step"]}

    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    classes = datamodule.classes
    try:
        model = build_model(cfg, num_classes=len(classes))
    except ConfigError as e:  # e.g. a recipe's model.kwargs.aux_logits on a model without auxiliary heads
        if cfg.get("recipe_info"):
            raise ConfigError(f"recipe '{cfg.recipe_info.name}': {e}") from None
        raise
    check_recipe(cfg, model)
    check_aux_heads(cfg, model, len(classes))
    module = build_module(cfg, model, classes)
    check_devices(cfg)
    trainer = build_trainer(cfg)
    datamodule.trainer = trainer  # fit() attaches it too; attached now, a bad batch split fails before launch
    per_device = datamodule.per_device_batch_size

    params = sum(p.numel() for p in model.parameters())
    rank_zero_info(
        f"model {cfg.model.name}: {params / 1e6:.2f} M parameters, {len(classes)} classes; data {data_source(cfg)} "
        f"at {cfg.data.resolution}px (crop ratio {cfg.data.crop_ratio}); global batch {cfg.data.batch_size} "
        f"({per_device} per device x {trainer.num_devices} device(s) x {trainer.num_nodes} node(s)); "
        f"lr {effective_lr(cfg):.6g} (optim.lr {cfg.optim.lr} for batch {cfg.optim.get('ref_batch_size')}, "
        f"scaling {cfg.optim.get('lr_scaling', 'none')})" + (f"; resuming from {ckpt_path}" if ckpt_path else "")
    )
    lock = RunLock(run_dir)
    if trainer.is_global_zero:
        lock.acquire()  # one live run per run directory (engine/run_lock.py)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        if ckpt_path:
            prune_hpc(run_dir / "checkpoints", ckpt_path)  # keep the two newest requeue checkpoints

    start = time.perf_counter()
    try:
        with quiet_known_noise(resuming=bool(ckpt_path)), warnings.catch_warnings():
            # messages the user cannot act on (trainer/compat.py); the data module keeps the loader's position
            # itself (state_dict; data/base.py), so Lightning's mid-epoch resume warning does not apply
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        lock.release()
    wall_time = time.perf_counter() - start

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    throughput = next((c.history for c in trainer.callbacks if isinstance(c, EpochThroughput)), [])
    checkpoint = trainer.checkpoint_callback
    results = {
        "model": cfg.model.name,
        "top1": 100 * metrics.get("val/top1", float("nan")),
        "top5": 100 * metrics.get("val/top5", float("nan")),
        "val_loss": metrics.get("val/loss", float("nan")),
        **(
            {"top1_ema": 100 * metrics["val_ema/top1"], "top5_ema": 100 * metrics["val_ema/top5"]}
            if "val_ema/top1" in metrics
            else {}
        ),
        "best_top1": best_top1(checkpoint),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "nonfinite_skipped": module.nonfinite_skipped,
        "params": params,
        "wall_time_s": wall_time,
        "images_per_sec": statistics.median(throughput) if throughput else None,
        "run_dir": str(run_dir),
        "best_ckpt": checkpoint.best_model_path if checkpoint else None,
        "last_ckpt": str(run_dir / "checkpoints" / "last.ckpt") if checkpoint else None,
    }
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", results)
        for logger in trainer.loggers:
            if hasattr(logger, "log_results"):
                logger.log_results(results)  # wandb: the results into the run summary, then close the run
        announce(
            f"val top-1 {results['top1']:.2f}%  top-5 {results['top5']:.2f}%  after {results['epochs']} epochs "
            f"({wall_time:.0f} s)\nrun directory: {run_dir}"
        )
    return results
