#!/usr/bin/env python
"""Convert a split of an ImageNet-layout folder, or of a CIFAR archive, to an FFCV .beton:
`python scripts/write_ffcv.py data.root=<folder> split=train out=<file.beton> [write_mode=...] [max_resolution=...]`
`python scripts/write_ffcv.py data=cifar10 split=train` (raw pixels, to data=cifar10_ffcv's file; docs/cifar.md)
(options in conf/write_ffcv.yaml; docs/data.md, "FFCV")."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from trainer.cli import prepare, user_errors
from trainer.data.ffcv import write_from_config

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@hydra.main(config_path=str(CONF_DIR), config_name="write_ffcv", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():
        result = write_from_config(cfg)
    print(result.summary(), flush=True)


if __name__ == "__main__":
    prepare(CONF_DIR, "write_ffcv")
    main()
