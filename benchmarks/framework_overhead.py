#!/usr/bin/env python
"""Framework overhead: training steps/s of train.py (Lightning) against a minimal hand-written PyTorch loop.

Both sides train the same model with the same optimizer on the same DataLoader, on the CPU, in one process.
Rounds are interleaved (the side that goes first alternates) so that drift in the machine's load hits both;
epoch 0 of every call is discarded (worker start-up, allocator warm-up) and validation is not timed.
The figure that matters is the ratio of the medians: train.py / hand loop, target >= 0.90.

    .venv/bin/python benchmarks/framework_overhead.py [--rounds 3] [--epochs 3] [--check] [override ...]

Overrides are train.py's (`model=resnet50 data.batch_size=32`); without any, the run is the main job.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from plain_loop import PlainLoop  # benchmarks/, on the path as this script's folder

from trainer.builders import build_datamodule
from trainer.cli import prepare
from trainer.resolve import resolve_config
from trainer.train import train

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
TARGET = 0.90
FRAMEWORK, HAND = "train.py", "hand loop"
NOISY = 1.25  # kept epochs of one side further apart than this (max / min): other jobs were competing for the CPU
# Applied before the command line's overrides, so these can be overridden too. One validation batch keeps the
# untimed part of each epoch short; the target is a CPU figure, so the CPU is asked for even where a GPU exists.
BENCH_OVERRIDES = ("trainer.accelerator=cpu", "trainer.devices=1", "trainer.limit_val_batches=1")


@dataclass
class Epoch:
    steps_per_sec: float
    images_per_sec: float


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """The config `python train.py <overrides>` runs with (register_configs was done by `prepare`)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def framework_epochs(overrides: Sequence[str], run_dir: Path, epochs: int) -> list[Epoch]:
    """train(cfg) itself, as train.py calls it; the per-epoch rates are EpochThroughput's, from metrics.csv."""
    cfg = compose_config([*overrides, f"run_dir={run_dir}", f"trainer.max_epochs={epochs}"])
    train(cfg)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/images_per_sec")]
    rates = [float(r["train/images_per_sec"]) for r in sorted(rows, key=lambda r: int(r["epoch"]))]
    shutil.rmtree(run_dir)  # two checkpoints of ~90 MB per call
    return [Epoch(rate / cfg.data.batch_size, rate) for rate in rates]


def hand_epochs(overrides: Sequence[str], epochs: int) -> list[Epoch]:
    """The baseline: the same model, optimizer and DataLoader in a plain loop (plain_loop.PlainLoop), timed as
    EpochThroughput times train.py's epochs (from the first batch request to the end of the last step)."""
    cfg = compose_config(overrides)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # as train() seeds
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    loop = PlainLoop(cfg, datamodule.num_classes, torch.device("cpu"))
    measured = []
    for _ in range(epochs):
        timed = loop.run(loader)
        measured.append(Epoch(timed.steps_per_sec, timed.images_per_sec))
    return measured


def unmatched_settings(cfg: DictConfig) -> list[str]:
    """Settings train.py would apply that the hand loop does not: with any of these the comparison is unfair."""
    unmatched = [
        ("trainer.precision", cfg.trainer.precision not in ("32-true", "32", 32)),
        ("trainer.gradient_clip_val", bool(cfg.trainer.gradient_clip_val)),
        ("trainer.accumulate_grad_batches", cfg.trainer.accumulate_grad_batches != 1),
        ("compile", bool(cfg.compile)),
        ("loss.aux_weights", bool(cfg.loss.aux_weights)),
    ]
    return [key for key, differs in unmatched if differs]


def report(kept: dict[str, list[Epoch]]) -> float:
    """Print the table of both sides and the verdict; return the ratio of the median steps/s."""
    print(f"\n{'side':<10} {'epochs kept':>11} {'median steps/s':>15} {'range steps/s':>15} {'median images/s':>16}")
    medians = {}
    noisy = False
    for side, epochs in kept.items():
        steps = [e.steps_per_sec for e in epochs]
        medians[side] = statistics.median(steps)
        images = statistics.median(e.images_per_sec for e in epochs)
        span = f"{min(steps):.3f}-{max(steps):.3f}"
        print(f"{side:<10} {len(epochs):>11} {medians[side]:>15.3f} {span:>15} {images:>16.1f}")
        noisy |= max(steps) > NOISY * min(steps)
    ratio = medians[FRAMEWORK] / medians[HAND]
    if noisy:
        print(f"warning: epochs of one side differ by more than {NOISY:g}x: the machine was busy, run again")
    print(f"ratio (train.py / hand loop): {ratio:.3f}  target >= {TARGET:.2f}: {'PASS' if ratio >= TARGET else 'FAIL'}")
    return ratio


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both sides (default 3)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per side and round (default 3); epoch 0 not kept")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when the ratio is below {TARGET}")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. model=resnet50 data.batch_size=32")
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.rounds < 1:
        parser.error("--epochs must be at least 2 (epoch 0 is discarded) and --rounds at least 1")

    overrides = [*BENCH_OVERRIDES, *args.overrides]
    threads = torch.get_num_threads()  # torch's default, set again before each side in case anything changed it
    prepare(CONF_DIR, "train", overrides)  # as train.py: register the models, a bad override exits with one line
    cfg = resolve_config(compose_config(overrides))  # data.resolution may come from the model
    print(
        f"model {cfg.model.name}, global batch {cfg.data.batch_size}, {cfg.data.resolution} px, "
        f"data {cfg.data.root}, num_workers {cfg.data.num_workers}, torch {torch.__version__} "
        f"({threads} threads, {os.cpu_count()} CPUs), lightning {L.__version__}; "
        f"{args.rounds} rounds x {args.epochs} epochs per side, epoch 0 of each discarded",
        flush=True,
    )
    if unmatched := unmatched_settings(cfg):
        print(f"warning: the hand loop does not apply {', '.join(unmatched)}: the ratio is not like for like")

    kept: dict[str, list[Epoch]] = {FRAMEWORK: [], HAND: []}
    with tempfile.TemporaryDirectory(prefix="framework_overhead-") as tmp:
        for round_ in range(args.rounds):
            for side in (FRAMEWORK, HAND) if round_ % 2 == 0 else (HAND, FRAMEWORK):
                torch.set_num_threads(threads)
                if side == FRAMEWORK:
                    epochs = framework_epochs(overrides, Path(tmp) / f"round{round_}", args.epochs)
                else:
                    epochs = hand_epochs(overrides, args.epochs)
                gc.collect()  # shut down this side's loader workers before the other side starts
                kept[side] += epochs[1:]
                rates = " ".join(f"{e.steps_per_sec:.3f}" for e in epochs)
                print(
                    f"round {round_ + 1}/{args.rounds} {side}: steps/s per epoch {rates} (epoch 0 not kept)", flush=True
                )
    ratio = report(kept)
    return 1 if args.check and ratio < TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
