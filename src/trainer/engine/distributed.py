"""Several processes and SLURM: the checks that turn Lightning's multi-line launch errors into one line, the SLURM
cluster environment with its requeue signal, and keeping Hydra's per-process files to rank 0.

Lightning is the engine: DDP (gloo on CPU, NCCL on GPUs), `SLURMEnvironment` for ranks under `srun`, and its
auto-requeue: on the requeue signal (`slurm.requeue_signal`, SIGUSR1 by default; slurm/train.sbatch asks SLURM for
it 90 s before the time limit) every rank saves `hpc_ckpt_<n>.ckpt` into the trainer's `default_root_dir`
(`<run_dir>/checkpoints`, see builders.build_trainer) and rank 0 runs `scontrol requeue <job>`. The requeued job
has the same SLURM_JOB_ID, so the run directory keyed by it is found again and `resume=auto` continues from the
newest readable checkpoint (engine/resume.py).
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Mapping, MutableSequence
from typing import Any

from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig

from trainer.errors import ConfigError

_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None  # "auto", "-1", a list of device ids: Lightning resolves those


def _uses_gpus(accelerator: str) -> bool:
    import torch

    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def check_devices(cfg: DictConfig, env: Mapping[str, str] | None = None) -> None:
    """One-line errors, before Lightning launches anything, for a device or node count that cannot be met.

    `trainer.devices` above the GPUs present (for `accelerator=gpu`, or `auto` on a machine with GPUs); under
    SLURM, `trainer.num_nodes` other than the allocation's node count and `trainer.devices` other than its tasks
    per node (Lightning would raise a ValueError or hang waiting for ranks that never start); and
    `trainer.sync_batchnorm=true` on the CPU, where torch's SyncBatchNorm fails at the first forward.
    """
    import torch

    env = os.environ if env is None else env
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    devices = _as_int(cfg.trainer.get("devices", "auto"))
    num_nodes = _as_int(cfg.trainer.get("num_nodes", 1)) or 1
    if devices is not None and devices > 0 and _uses_gpus(accelerator):
        present = torch.cuda.device_count()
        if devices > present:
            raise ConfigError(f"trainer.devices={devices} but this machine has {present} GPU(s)")
    if cfg.trainer.get("sync_batchnorm") and not _uses_gpus(accelerator):
        raise ConfigError(
            f"trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm runs on CUDA/XPU only), "
            f"but trainer.accelerator={accelerator} runs on the CPU"
        )
    if not _in_slurm_job(env):
        return
    nodes = _as_int(env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES"))
    if nodes is not None and nodes != num_nodes:
        raise ConfigError(
            f"trainer.num_nodes={num_nodes} but the SLURM allocation has {nodes} node(s) (sbatch --nodes={nodes}); "
            f"set trainer.num_nodes={nodes}"
        )
    tasks = _as_int((env.get("SLURM_NTASKS_PER_NODE") or "").split("(")[0])
    if tasks is not None and devices is not None and devices > 0 and tasks != devices:
        raise ConfigError(
            f"trainer.devices={devices} but SLURM starts {tasks} task(s) per node (--ntasks-per-node={tasks}); "
            f"one task per device: set trainer.devices={tasks}"
        )


def _in_slurm_job(env: Mapping[str, str]) -> bool:
    """A SLURM job step that Lightning will treat as its cluster (not an interactive `salloc` shell)."""
    if "SLURM_NTASKS" not in env:
        return False
    if env is os.environ:
        return SLURMEnvironment.detect()
    return env.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def requeue_signal(name: str) -> signal.Signals:
    try:
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except KeyError:
        raise ConfigError(f"slurm.requeue_signal='{name}' is not a signal name (e.g. USR1, USR2, TERM)") from None


SRUN_HINT = "The `srun` command is available on your system but is not used"


def in_slurm_allocation(env: Mapping[str, str] | None = None) -> bool:
    """Inside a SLURM job or allocation (sbatch, salloc, srun): SLURM sets SLURM_JOB_ID for all of them."""
    return "SLURM_JOB_ID" in (os.environ if env is None else env)


def quiet_srun_hint() -> None:
    """Silence Lightning's "prepend srun" hint outside a SLURM allocation, where it is not advice the user can take.

    Lightning's `SLURMEnvironment.detect()` warns whenever an `srun` binary is on PATH and the process was not started
    by srun: on every workstation or CI machine with SLURM's client installed it fired during a plain `make train`
    (from the cluster-environment choice in `Trainer()` and again from `fit()`'s checkpoint connector, lightning
    2.6). Outside an allocation there is nothing to prepend srun to; jobs go through slurm/train.sbatch, which runs
    srun. Inside an allocation (SLURM_JOB_ID set) the hint is left alone: there a missing srun is a real mistake.
    The filter is process-wide because fit() detects again after the Trainer is built."""
    if not in_slurm_allocation():
        warnings.filterwarnings("ignore", message=SRUN_HINT)


def cluster_plugins(cfg: DictConfig) -> list[Any]:
    """Under SLURM: Lightning's SLURMEnvironment with `slurm.auto_requeue` and `slurm.requeue_signal`."""
    slurm = cfg.get("slurm") or {}
    if not SLURMEnvironment.detect():
        return []
    return [
        SLURMEnvironment(
            auto_requeue=bool(slurm.get("auto_requeue", True)),
            requeue_signal=requeue_signal(str(slurm.get("requeue_signal", "USR1"))),
        )
    ]


def process_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's global rank as the launcher gave it (0 before any launch, and for a single process)."""
    env = os.environ if env is None else env
    ranks = [_as_int(env.get(name)) for name in _RANK_VARIABLES]
    return max((r for r in ranks if r is not None), default=0)


def rank_zero_hydra_files(argv: MutableSequence[str] | None = None, env: Mapping[str, str] | None = None) -> None:
    """On ranks other than 0, keep Hydra from writing `.hydra/` and a job log into the shared run directory (only
    rank 0 writes files there); their log lines go to stdout, which `srun` labels per task."""
    argv = sys.argv if argv is None else argv
    if process_rank(env) == 0:
        return
    keys = {arg.split("=", 1)[0].lstrip("+~") for arg in argv[1:]}
    if "hydra.output_subdir" not in keys:
        argv.append("hydra.output_subdir=null")
    if "hydra/job_logging" not in keys:
        argv.append("hydra/job_logging=stdout")
