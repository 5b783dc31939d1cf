"""Which checkpoint `resume=auto` continues from: the newest readable one in `<run_dir>/checkpoints/`.

Candidates are what a run writes to continue from: `last.ckpt` (a link to the newer of the two `step=<n>.ckpt`
the last-checkpoint callback keeps, conf/callbacks/default.yaml) and the `hpc_ckpt_<n>.ckpt` Lightning saves on
SLURM's requeue signal; `best.ckpt` is not one (it may be epochs old). Newest means the most recent write, which
is also the most progress: a run only moves forward. A candidate that cannot be loaded (a node lost in the middle
of a write on a file system without atomic rename, a disk error) is skipped with a warning naming it, and the
next newest is used. Writes are atomic (trainer/io.py), so this is the second line of defence.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from trainer.errors import CheckpointError
from trainer.io import load

RESUMABLE = ("last.ckpt", "step=*.ckpt", "hpc_ckpt_*.ckpt")
HPC_KEEP = 2  # requeue checkpoints kept; older ones are removed once a newer one is known to be readable


def resume_candidates(ckpt_dir: Path) -> list[Path]:
    """Resumable checkpoints in `ckpt_dir`, newest first; a link counts as its target (named as the file read)."""
    seen = {path.resolve() for pattern in RESUMABLE for path in ckpt_dir.glob(pattern) if path.exists()}
    return sorted(seen, key=lambda p: p.stat().st_mtime_ns, reverse=True)  # a dangling link is no candidate


def readable(path: Path) -> str | None:
    """None if `path` loads as a Lightning checkpoint, else why not (one line)."""
    try:
        checkpoint = load(path, what="checkpoint", mmap=True)  # as resuming will read it (trainer/io.py)
    except CheckpointError as e:  # any failure to load means: do not resume from it
        return e.one_line()
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "global_step" not in checkpoint:
        return "not a training checkpoint (no state_dict / global_step)"
    return None


def newest_readable(ckpt_dir: Path) -> Path | None:
    """The newest candidate that loads; each unreadable newer one is named in a warning. None if there is none."""
    for path in resume_candidates(ckpt_dir):
        problem = readable(path)
        if problem is None:
            return path
        rank_zero_warn(f"checkpoint '{path}' is unreadable ({problem}); falling back to the previous checkpoint")
    return None


def _hpc_number(path: Path) -> int:
    digits = "".join(c for c in path.stem.removeprefix("hpc_ckpt_") if c.isdigit())
    return int(digits or 0)


def prune_hpc(ckpt_dir: Path, resuming_from: str | Path, keep: int = HPC_KEEP) -> list[Path]:
    """Remove all but the newest `keep` requeue checkpoints, never the one being resumed from (rank 0 only);
    returns what was removed."""
    hpc = sorted(ckpt_dir.glob("hpc_ckpt_*.ckpt"), key=_hpc_number, reverse=True)  # Lightning numbers them
    removed = [p for p in hpc[keep:] if p.resolve() != Path(resuming_from).resolve()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
