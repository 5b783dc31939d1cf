"""One live run per run directory: `<run_dir>/.lock` holds the owner's host, pid and SLURM job id.

A second run started in a directory whose lock belongs to a live process is refused with one line naming it. A
lock whose process is gone (same host, no such pid) is stale: it is taken over, saying so. A requeued SLURM job
of the same job id (SLURM_JOB_ID, with the array task) takes the lock over: its previous incarnation was killed on
another node or is being killed. A lock from another host, not of this job, is taken as live (its pid cannot be
checked from here): remove the file by hand if that run is known to be dead. Taken with O_CREAT | O_EXCL (atomic),
removed when the run ends; only rank 0 takes it (the other ranks belong to the same run).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from trainer.errors import RunDirLockedError

LOCK_NAME = ".lock"


def _slurm_job() -> str | None:
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if job:
        return f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": _slurm_job()}


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def _write_new(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(_owner(), f)
        return True

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a race with another starter: try again after a takeover
            if self._write_new():
                self.held = True
                return
            try:
                owner = json.loads(self.path.read_text() or "{}")
            except (OSError, ValueError):
                owner = {}
            host, pid, job = owner.get("host"), owner.get("pid"), owner.get("slurm_job")
            me = _owner()
            if job and job == me["slurm_job"]:
                why = f"the previous run of SLURM job {job} (requeued)"
            elif host == me["host"] and isinstance(pid, int) and not _alive(pid):
                why = f"a stale lock of process {pid} on {host}, which is gone"
            elif not owner:
                why = "an unreadable lock file"
            else:
                raise RunDirLockedError(
                    f"run directory '{self.path.parent}' is in use by a live run (process {pid} on {host}"
                    + (f", SLURM job {job}" if job else "")
                    + f"); use another run_dir, or remove '{self.path}' if that run is dead"
                )
            rank_zero_warn(f"taking over the lock of run directory '{self.path.parent}' from {why}")
            self.path.unlink(missing_ok=True)
        raise RunDirLockedError(f"could not take the lock '{self.path}' (other runs starting at the same time)")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
