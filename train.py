#!/usr/bin/env python
"""Train a backbone: `python train.py [group=option ...] [key=value ...]` (see conf/train.yaml and the README)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from trainer.cli import prepare, user_errors
from trainer.engine.distributed import rank_zero_hydra_files
from trainer.train import train

CONF_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():
        train(cfg)


if __name__ == "__main__":
    rank_zero_hydra_files()  # ranks > 0 (srun tasks, DDP children) write no .hydra/ or job log
    prepare(CONF_DIR, "train", check_run_dir=True)
    main()
