#!/usr/bin/env python
"""Export a checkpoint and upload it to the Hugging Face Hub: `python scripts/publish.py ckpt=<path>
repo_id=<org/name> [private=true] [out=<dir>] [overwrite=true] [weights=raw|ema] [license=<id>] [dry_run=true]`
(options in conf/publish.yaml; trainer.hub and docs/hub.md).

The token comes from HF_TOKEN or `hf auth login` and is never written anywhere; dry_run=true lists the files
and their sizes and uploads nothing."""

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from trainer.cli import prepare, user_errors
from trainer.hub import publish

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@hydra.main(config_path=str(CONF_DIR), config_name="publish", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():
        publish(**OmegaConf.to_container(cfg))


if __name__ == "__main__":
    prepare(CONF_DIR, "publish")
    main()
