#!/usr/bin/env python
"""Data-parallel scaling: training images/s with 1 and N processes, side by side, and the efficiency.

    python benchmarks/scaling.py                        # CPU: 1 vs 2 gloo processes on the sample set
    python benchmarks/scaling.py --accelerator gpu --devices 1 2 4 8 --model resnet50 --batch-per-device 64

Weak scaling: the per-device batch is fixed, so N processes train a global batch N times as large; efficiency is
images/s(N) / (N x images/s(1)). Each setting is a real `python train.py` (DDP through Lightning), `--repeats` times,
interleaved so a busy machine slows every setting alike; the figure is the median of the runs' median epoch
throughput (EpochThroughput, which excludes validation). Results go to stdout as a table and, with --out, JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(args: argparse.Namespace, devices: int, run_dir: Path) -> float:
    overrides = [
        f"run_dir={run_dir}",
        f"model={args.model}",
        f"trainer.accelerator={args.accelerator}",
        f"trainer.devices={devices}",
        f"trainer.strategy={'ddp' if devices > 1 else 'auto'}",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.limit_train_batches={args.batches}",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        f"data.batch_size={args.batch_per_device * devices}",
        f"data.num_workers={args.workers}",
        "callbacks.checkpoint=null",
        "callbacks.last_checkpoint=null",
        *args.overrides,
    ]
    # the same intra-op threads per process in every setting (Lightning would give one process all the cores)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads_per_process)}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"error: train.py with {devices} device(s) failed:\n{proc.stderr[-2000:]}")
    return float(json.loads((run_dir / "results.json").read_text())["images_per_sec"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="timm/resnet10t")
    parser.add_argument("--batch-per-device", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="training batches per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads-per-process", type=int, default=1, help="OMP_NUM_THREADS of each process")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="more train.py overrides")
    args = parser.parse_args()

    rates: dict[int, list[float]] = {d: [] for d in args.devices}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for devices in args.devices:
                rates[devices].append(run_once(args, devices, Path(tmp) / f"{devices}-{repeat}"))
    base = statistics.median(rates[args.devices[0]]) / args.devices[0]
    rows = []
    print(f"{'devices':>7} {'images/s (median)':>18} {'runs':>30} {'efficiency':>10}")
    for devices in args.devices:
        median = statistics.median(rates[devices])
        efficiency = median / (devices * base)
        rows.append({"devices": devices, "images_per_sec": median, "runs": rates[devices], "efficiency": efficiency})
        runs = ", ".join(f"{r:.0f}" for r in rates[devices])
        print(f"{devices:>7} {median:>18.1f} {runs:>30} {efficiency:>10.1%}")
    if args.out:
        args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out)}, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
