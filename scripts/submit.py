#!/usr/bin/env python
"""Submit slurm/train.sbatch: `python scripts/submit.py [SLURM options] [train.py overrides ...]`.

    python scripts/submit.py --nodes 2 --gpus-per-node 8 --partition gpu --account proj model=resnet50 data=imagenet
    python scripts/submit.py --time 4:00:00 optim.lr=0.1,0.2,0.4 model=resnet18,resnet50   # 6 jobs, one per point
    python scripts/submit.py --dry-run ...                                                  # print the sbatch lines

Overrides with Hydra's sweep syntax (`a=1,2`, `range(...)`, `choice(...)`) expand into their cartesian product,
as `train.py -m` would, and each point becomes its own job of train.sbatch, with its preemption signal, requeue and
automatic resume into `runs/slurm/<job id>`. (`train.py -m hydra/launcher=submitit_slurm ...` is the other way:
submitit runs each point as a SLURM job of its own, without this script; see slurm/README.md.)
The overrides are checked (composed once per point) before anything is submitted.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import subprocess
import sys
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "slurm" / "train.sbatch"


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """The command lines of every point of a Hydra sweep (a single point when nothing sweeps)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in parsed if o.is_sweep_override()]
    return [[*plain, *point] for point in itertools.product(*axes)]


def sbatch_command(args: argparse.Namespace, overrides: list[str], index: int | None) -> list[str]:
    tasks = args.gpus_per_node or args.tasks_per_node
    cmd = ["sbatch", "--parsable", f"--nodes={args.nodes}", f"--ntasks-per-node={tasks}"]
    if args.gpus_per_node:
        cmd.append(f"--gpus-per-node={args.gpus_per_node}")
    for flag in ("cpus_per_task", "time", "partition", "account", "output"):
        value = getattr(args, flag)
        if value:
            cmd.append(f"--{flag.replace('_', '-')}={value}")
    if index is not None:
        cmd.append(f"--job-name={args.job_name}-{index}")
    else:
        cmd.append(f"--job-name={args.job_name}")
    return [*cmd, *args.sbatch_arg, str(SBATCH), *overrides]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1, help="nodes (trainer.num_nodes)")
    parser.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node: one task each")
    parser.add_argument("--tasks-per-node", type=int, default=1, help="tasks per node without GPUs (CPU DDP)")
    parser.add_argument("--cpus-per-task", type=int, default=None)
    parser.add_argument("--time", default=None, help="time limit, e.g. 24:00:00")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--output", default=None, help="log file (sbatch --output; %%j is the job id)")
    parser.add_argument("--job-name", default="trainer")
    parser.add_argument("--sbatch-arg", action="append", default=[], help="any other sbatch option (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch commands, submit nothing")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> list[str]:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        print(f"error: unknown option {unknown[0]} (train.py overrides are key=value)", file=sys.stderr)
        sys.exit(2)
    from trainer.cli import EXIT_USER_ERROR, check_overrides
    from trainer.config import register_configs
    from trainer.errors import UserError

    points = sweep_points(overrides)
    try:
        for point in points:
            register_configs()
            check_overrides(ROOT / "conf", "train", point)
    except UserError as e:
        print(f"error: {e.one_line()}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    env = {**os.environ, "TRAINER_ROOT": os.environ.get("TRAINER_ROOT", str(ROOT))}
    job_ids = []
    for i, point in enumerate(points):
        cmd = sbatch_command(args, point, i if len(points) > 1 else None)
        if args.dry_run:
            print(shlex.join(cmd))
            continue
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode:
            print(f"error: sbatch failed: {result.stderr.strip()}", file=sys.stderr)
            sys.exit(1)
        job_id = result.stdout.strip().split(";")[0]
        job_ids.append(job_id)
        print(f"job {job_id}: {shlex.join(point)}", flush=True)
    return job_ids


if __name__ == "__main__":
    main()
