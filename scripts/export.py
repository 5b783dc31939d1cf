#!/usr/bin/env python
"""Export a checkpoint as a timm-format folder: `python scripts/export.py ckpt=<path> out=<dir> [overwrite=true]
[weights=raw|ema] [license=<id>]` (options in conf/export.yaml; trainer.hub and docs/hub.md)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from trainer.cli import prepare, user_errors
from trainer.hub import export

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@hydra.main(config_path=str(CONF_DIR), config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():
        result = export(cfg.ckpt, cfg.out, overwrite=cfg.overwrite, weights=cfg.weights, license=cfg.license)
    print(f"exported {result.architecture} ({result.weights} weights) to {result.out}:")
    for name, size in result.files.items():
        print(f"  {name}  {size} bytes")


if __name__ == "__main__":
    prepare(CONF_DIR, "export")
    main()
