#!/usr/bin/env python
"""Export a checkpoint and upload it to the Hugging Face Hub: `python scripts/publish.py ckpt=<path>
repo_id=<org/name> [private=true] [out=<dir>] [overwrite=true] [weights=auto|raw|ema] [license=<id>] [--dry-run]`.

The token comes from HF_TOKEN or `hf auth login` and is never written anywhere; --dry-run lists the files
and their sizes and uploads nothing."""

import sys

from trainer.cli import user_errors
from trainer.hub import parse_args, publish

if __name__ == "__main__":
    optional = {
        "private": False,
        "dry_run": False,
        "out": None,
        "overwrite": False,
        "weights": "auto",
        "license": "apache-2.0",
    }
    with user_errors():
        args = parse_args(sys.argv[1:], ("ckpt", "repo_id"), optional)
        publish(args.pop("ckpt"), args.pop("repo_id"), **args)
