"""A run directory that already holds a run: refused unless resumed, and a finished run left as it is.

A new run started in the directory of an earlier one would overwrite its `config.yaml`, truncate its `metrics.csv`
and replace its checkpoints; `check_reuse` refuses that before anything is written (train.py calls it before
Hydra writes `.hydra/`, and `train()` calls it again for in-process callers and sweep jobs). Hydra's own files
(`.hydra/`, the job log) do not count as a run: Hydra writes them for every job before `train()` starts.

`resume=auto` on a run that has already reached `trainer.max_epochs` (or `max_steps`) would fit nothing, and
Lightning's empty metrics would be written over `results.json` as NaN. `finished_run` recognises that case from the
checkpoint being resumed, so `train()` reports the run as complete and changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from trainer.errors import ConfigError
from trainer.io import load

RUN_FILES = ("config.yaml", "metrics.csv", "results.json")


def holds_run(run_dir: Path) -> bool:
    """True if `run_dir` holds (part of) a training run: its config, metrics, results or any checkpoint."""
    if any((run_dir / name).exists() for name in RUN_FILES):
        return True
    checkpoints = run_dir / "checkpoints"
    return checkpoints.is_dir() and any(checkpoints.iterdir())


def check_reuse(run_dir: Path, resume: str, ckpt_path: str | None) -> None:
    """Refuse, in one line, a run that would start afresh in a directory holding another run."""
    if resume == "auto" or ckpt_path or not holds_run(run_dir):
        return
    raise ConfigError(
        f"run_dir '{run_dir}' already holds a run; add resume=auto to continue it, "
        f"or give another run_dir=... for a new run"
    )


def _completed_epochs(checkpoint: dict[str, Any]) -> int:
    """Epochs the checkpointed run finished: Lightning's fit-loop progress counts an epoch `processed` once it has
    trained and validated, before the end-of-epoch checkpoint is saved (`completed` only after it is)."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(checkpoint.get("epoch", -1)) + 1


def finished_run(cfg: DictConfig, ckpt_path: str) -> dict[str, Any] | None:
    """If training from `ckpt_path` to `cfg.trainer`'s limits has nothing left to do, what the run reached:
    {"epochs", "global_step", "results" (results.json, or None where it is missing)}; else None."""
    checkpoint = load(ckpt_path, what="checkpoint", mmap=True)
    epochs, step = _completed_epochs(checkpoint), int(checkpoint.get("global_step", 0))
    max_epochs = cfg.trainer.get("max_epochs")
    max_steps = cfg.trainer.get("max_steps")
    done = (max_epochs is not None and max_epochs >= 0 and epochs >= max_epochs) or (
        max_steps is not None and max_steps >= 0 and step >= max_steps
    )
    if not done:
        return None
    results_file = Path(cfg.run_dir) / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else None
    return {"epochs": epochs, "global_step": step, "results": results}


def complete_message(run_dir: Path, finished: dict[str, Any], max_epochs: Any) -> str:
    """What `resume=auto` on a finished run prints."""
    results = finished["results"]
    if results:
        reached = f"val top-1 {results.get('top1'):.2f}%  top-5 {results.get('top5'):.2f}% (results.json)"
    else:
        reached = "no results.json (evaluate it: python evaluate.py ckpt=<run_dir>/checkpoints/best.ckpt)"
    return (
        f"run in {run_dir} is already complete: {finished['epochs']} epochs done (trainer.max_epochs={max_epochs}); "
        f"{reached}; nothing was changed (raise trainer.max_epochs to train it further)"
    )
