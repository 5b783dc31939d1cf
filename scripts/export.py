#!/usr/bin/env python
"""Export a checkpoint as a timm-format folder: `python scripts/export.py ckpt=<path> out=<dir> [overwrite=true]
[weights=auto|raw|ema] [license=<id>]` (see trainer.hub and docs/hub.md)."""

import sys

from trainer.cli import user_errors
from trainer.hub import export, parse_args

if __name__ == "__main__":
    with user_errors():
        args = parse_args(
            sys.argv[1:], ("ckpt", "out"), {"overwrite": False, "weights": "auto", "license": "apache-2.0"}
        )
        result = export(
            args["ckpt"], args["out"], overwrite=args["overwrite"], weights=args["weights"], license=args["license"]
        )
    print(f"exported {result.architecture} ({result.weights} weights) to {result.out}:")
    for name, size in result.files.items():
        print(f"  {name}  {size} bytes")
