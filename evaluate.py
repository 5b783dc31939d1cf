#!/usr/bin/env python
"""Evaluate a checkpoint: `python evaluate.py ckpt=<path> [key=value ...]` (see conf/eval.yaml and the README)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from trainer.cli import prepare, user_errors
from trainer.engine.distributed import rank_zero_hydra_files
from trainer.evaluate import evaluate

CONF_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():
        evaluate(cfg)


if __name__ == "__main__":
    rank_zero_hydra_files()  # ranks > 0 (DDP children) write no .hydra/ or job log
    prepare(CONF_DIR, "eval")
    main()
