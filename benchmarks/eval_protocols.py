#!/usr/bin/env python
"""What 10-crop evaluation costs over one centre crop: images/s of both protocols on the same checkpoint.

    .venv/bin/python benchmarks/eval_protocols.py                      # trains a tiny ResNet-18 first (sample set)
    .venv/bin/python benchmarks/eval_protocols.py ckpt=<path> --rounds 5
    .venv/bin/python benchmarks/eval_protocols.py --check              # exit 1 when the cost ratio exceeds 10.5

Each round evaluates the checkpoint with `eval.protocol=center` and `eval.protocol=ten_crop` (alternating which
goes first) through `trainer.evaluate.evaluate`, so the path is evaluate.py's own: data loading, view
extraction, the batched forward pass and the metrics are all timed. The figures are medians over rounds; the cost
ratio is center images/s / ten_crop images/s. Ten views cost at most ten forward passes; the target (<= 10.5x)
allows for the view stacking, and loading and resizing each image once is what keeps the ratio below 10.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from trainer.cli import prepare
from trainer.evaluate import evaluate
from trainer.train import train

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
TARGET = 10.5
CPU = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.enable_progress_bar=false"]


def _compose(name: str, overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--check", action="store_true", help=f"exit 1 when the ratio exceeds {TARGET}")
    parser.add_argument("overrides", nargs="*", help="ckpt=<path>, and any evaluate.py override")
    args = parser.parse_args(argv)
    overrides = [o for o in args.overrides if not o.startswith("ckpt=")]
    prepare(CONF_DIR, "eval", overrides)  # register the models; a bad override exits with one line
    work = Path(tempfile.mkdtemp(prefix="eval_protocols_"))
    ckpt = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("ckpt=")), None)
    if ckpt is None:  # a tiny run: the weights do not matter for speed
        run = work / "run"
        train(_compose("train", [f"run_dir={run}", *CPU, "trainer.max_epochs=1", "trainer.limit_train_batches=2"]))
        ckpt = str(run / "checkpoints" / "last.ckpt")
    rates: dict[str, list[float]] = {"center": [], "ten_crop": []}
    for round_ in range(args.rounds):
        order = list(rates) if round_ % 2 == 0 else list(reversed(rates))
        for protocol in order:
            given = [f"ckpt={ckpt}", f"eval.protocol={protocol}", f"eval.out={work}/{protocol}.json", *overrides]
            results = evaluate(_compose("eval", [*CPU, *given]), overrides=given)
            rates[protocol].append(results["images_per_sec"])
    center, ten = statistics.median(rates["center"]), statistics.median(rates["ten_crop"])
    ratio = center / ten
    print(f"\ncheckpoint: {ckpt}  ({results['images']} images, {args.rounds} rounds)")
    for protocol, values in rates.items():
        print(
            f"{protocol:<9} images/s: median {statistics.median(values):8.1f}  "
            f"range {min(values):.1f}-{max(values):.1f}"
        )
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"cost ratio center / ten_crop: {ratio:.2f}x (target <= {TARGET}x): {verdict}")
    return 1 if args.check and ratio > TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
