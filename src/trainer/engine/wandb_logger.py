"""Weights & Biases tracking (`logger=wandb`): Lightning's WandbLogger, made safe for unattended runs.

- Offline unless there is an API key (WANDB_API_KEY or a netrc entry from `wandb login`), so a fresh machine never
  prompts; offline runs are synced later with `wandb sync <run_dir>/wandb/offline-run-*`.
- The run id is kept in `<run_dir>/wandb/run-id.txt`: a run resumed in its directory (resume=auto, a requeued job)
  continues the same wandb run.
- The run's config is the resolved `config.yaml` train() writes before fitting; the best checkpoint is logged as a
  model artifact when `log_best_checkpoint` is set.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from trainer.compat import logger_experiment, set_logger_experiment, set_wandb_run_id, wandb_init_args, wandb_run_id

RUN_ID_FILE = "run-id.txt"


def has_wandb_credentials() -> bool:
    """An API key in WANDB_API_KEY, or a netrc entry for the W&B host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


class RunLogger(WandbLogger):
    """WandbLogger with a persistent run id, the run's config, auto offline mode and an opt-in best checkpoint."""

    def __init__(
        self,
        save_dir: str,
        project: str,
        entity: str | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
        offline: bool | None = None,
        log_best_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        self.run_dir = Path(save_dir)
        self.log_best_checkpoint = log_best_checkpoint
        id_file = self.run_dir / "wandb" / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        if offline is None:  # a WANDB_MODE the user set wins; else offline without credentials
            mode = None if os.environ.get("WANDB_MODE") else ("online" if has_wandb_credentials() else "offline")
        else:
            mode = "offline" if offline else "online"
        self.run_dir.joinpath("wandb").mkdir(parents=True, exist_ok=True)  # wandb writes here, or to /tmp
        super().__init__(
            name=name,
            save_dir=str(self.run_dir),
            id=run_id,
            project=project,
            entity=entity,
            tags=list(tags) or None,
            **({"mode": mode} if mode else {}),
            **kwargs,
        )
        self._best_callback: ModelCheckpoint | None = None
        # Lightning always passes anonymous=None, which wandb 0.31 answers with "The anonymous setting has no
        # effect" on every run; and wandb's end-of-run history and summary (about 30 lines) repeat results.json
        init = wandb_init_args(self)
        if init.get("anonymous") is None:
            init.pop("anonymous", None)
        init.setdefault("settings", {"quiet": True})

    @property
    def experiment(self) -> Any:
        if logger_experiment(self) is None and rank_zero_only.rank == 0:
            import wandb
            from wandb.sdk.lib.runid import generate_id

            if wandb.run is not None and wandb.run.id != wandb_run_id(self):  # an earlier run, left open
                wandb.finish()
            if wandb_run_id(self) is None:
                set_wandb_run_id(self, generate_id())
            self.run_dir.joinpath("wandb", RUN_ID_FILE).write_text(wandb_run_id(self) + "\n")
            config = self.run_dir / "config.yaml"  # written by train() before fitting, when the run is created
            if config.is_file() and "config" not in wandb_init_args(self):
                wandb_init_args(self)["config"] = yaml.safe_load(config.read_text())
        return super().experiment

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        # the best-by-metric one, not the last-checkpoint one (it keeps the newest two by "step")
        if checkpoint_callback.monitor not in (None, "step"):
            self._best_callback = checkpoint_callback
        super().after_save_checkpoint(checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        best = self._best_callback
        if status != "success" or not self.log_best_checkpoint or best is None or not best.best_model_path:
            return
        import wandb

        score = best.best_model_score
        artifact = wandb.Artifact(
            f"model-{self.experiment.id}",
            type="model",
            metadata={"monitor": best.monitor, "score": float(score) if score is not None else None},
        )
        artifact.add_file(best.best_model_path, name=Path(best.best_model_path).name)
        self.experiment.log_artifact(artifact, aliases=["best", "latest"])

    @rank_zero_only
    def log_results(self, results: dict[str, Any]) -> None:
        """The run's final results (results.json) into the run summary, then close the run."""
        experiment = logger_experiment(self)
        if experiment is None:
            return
        experiment.summary.update({f"final/{k}": v for k, v in results.items() if v is not None})
        experiment.finish()
        set_logger_experiment(self, None)
