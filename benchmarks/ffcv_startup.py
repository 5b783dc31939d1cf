#!/usr/bin/env python
"""FFCV start-up: wall time of a short `train.py data=sample_ffcv` process with numba's on-disk cache of ffcv's plain
jitted helpers warm (what every process after the first sees) against the same run with that cache empty (what
every process paid before `trainer.compat.cache_ffcv_jit_helpers`: numba compiled ffcv's typed-Dict functions and
QuasiRandom's order generator again in each process).

Each run is a fresh process (the cost is per process: a DDP rank, a SLURM task, a requeued job, a test subprocess).
The empty side gets a new NUMBA_CACHE_DIR per run, the warm side one folder filled by an untimed first run; rounds
alternate which side goes first. The empty side also writes its cache (a few milliseconds), so its figure is the old
cost plus that write. The per-loader pipeline ffcv generates is compiled on both sides (it cannot be cached).

    .venv/bin/python benchmarks/ffcv_startup.py [--rounds 5] [override ...]

Overrides are train.py's; the default run is ResNet-10t on the sample set, 4 training and 2 validation batches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = (
    "data=sample_ffcv",
    "model=timm/resnet10t",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "data.num_workers=0",
    "logger=csv",
)


def one_run(work: Path, numba_cache: Path, overrides: list[str], tag: str) -> float:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache)}
    cmd = [sys.executable, str(ROOT / "train.py"), *RUN, f"run_dir={work / tag}", f"paths.cache_dir={work / 'data'}"]
    start = time.perf_counter()
    done = subprocess.run([*cmd, *overrides], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"train.py failed ({tag}):\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args, overrides = parser.parse_known_args()
    times: dict[str, list[float]] = {"empty": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="ffcv_startup_") as tmp:
        work = Path(tmp)
        warm = work / "numba_warm"
        one_run(work, warm, overrides, "prime")  # writes the sample .betons and fills the warm cache; not timed
        for r in range(args.rounds):
            order = ("empty", "warm") if r % 2 == 0 else ("warm", "empty")
            for side in order:
                cache = warm if side == "warm" else work / f"numba_empty_{r}"
                times[side].append(one_run(work, cache, overrides, f"{side}_{r}"))
                print(f"round {r}: {side:5s} {times[side][-1]:6.2f} s", flush=True)
    empty, warm_s = statistics.median(times["empty"]), statistics.median(times["warm"])
    print(f"median per process: cache empty {empty:.2f} s, cache warm {warm_s:.2f} s")
    print(f"saved per process: {empty - warm_s:.2f} s; warm / empty = {warm_s / empty:.2f}")


if __name__ == "__main__":
    main()
