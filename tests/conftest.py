"""Shared fixtures: the real config tree composed as train.py composes it, and the bundled sample set written
once per session into a temporary cache."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from omegaconf import DictConfig

from tests.helpers import ROOT, compose_config, tiny_overrides
from trainer.data import write_sample_set

# Under pytest-xdist (`make test` runs `-n auto`) each worker gets an equal share of the cores, so two workers on a
# 2-core machine do not oversubscribe it; a plain `pytest` run uses up to two threads.
# The same count goes to the subprocesses the tests start (OMP_NUM_THREADS), so a run in a subprocess computes with
# the thread count of the in-process run it is compared with (CPU kernels' sums depend on it).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
os.environ["OMP_NUM_THREADS"] = str(_THREADS)
torch.set_num_threads(_THREADS)
# ffcv compiles every loader's pipeline with numba when the loader starts, in every process; on the tests' tiny data
# the compile is most of an FFCV run (a ResNet-18 train.py run on 80 images: 30 s, 22 s of it numba). LLVM's
# optimisation passes are the part that NUMBA_OPT=0 skips (numba's documented setting, read when numba is imported:
# here, before any test imports it, and inherited by the subprocesses). Measured: test_ffcv.py's worker time 369 s
# against 319 s, with the same results. What the loaders compute is under test, not how fast LLVM made them; the
# benchmarks, run by hand, keep numba's default. NUMBA_OPT set in the environment wins.
os.environ.setdefault("NUMBA_OPT", "0")
# glibc's malloc serves every block over 32 MiB with a fresh mmap and unmaps it when freed, so each large tensor of a
# training step (a VGG's 411 MB FC6 weight and its gradient, ffcv's batch buffers) is faulted in page by page again
# at every allocation; this VM pays dearly for page faults. Kept on the heap instead, freed blocks are reused. Read at
# process start: set here (pytest's first process) for the pytest-xdist workers and every subprocess the tests start.
# Measured: the eight VGG entries of test_forward_backward 17.5 s against 27.2 s in the whole suite; no change for
# the tests that start interpreters (test_first_hour + test_resume serially: 112 s either way). Memory a process has
# freed is kept by it rather than returned, which the 24 GiB machine affords; the environment's own setting wins.
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(4 << 30))
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(64 << 30))

TIERS = ("unit", "integration", "system")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which applies the groups marked here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test is in exactly one tier (pyproject's markers), so `-m unit`, `-m "not system"` select what they say:
    unit (no training), integration (train(cfg) / evaluate(cfg) in process), system (command line, subprocesses, DDP,
    SLURM, FFCV end to end). A test with none or with two is a usage error naming it.

    The tests run longest first (system, integration, unit; slow before the rest of a tier; in collection order
    otherwise), so that pytest-xdist's workers, handed one test at a time, finish together rather than one waiting on
    the other's last long test. Tests that use the real SLURM cluster are marked for one pytest-xdist group: one
    worker runs them one after another, on the one cluster (pytest <9.2: pyproject.toml; and this hook first)."""
    tiers = {item.nodeid: [t for t in TIERS if item.get_closest_marker(t)] for item in items}
    if both := [node for node, found in tiers.items() if len(found) > 1]:
        raise pytest.UsageError(f"tests with more than one of the markers {', '.join(TIERS)}: {', '.join(both[:10])}")
    if untiered := [node for node, found in tiers.items() if not found]:
        raise pytest.UsageError(
            f"{len(untiered)} tests have no tier marker ({', '.join(TIERS)}): {', '.join(untiered[:10])}"
        )
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))
    items.sort(key=lambda item: (-TIERS.index(tiers[item.nodeid][0]), item.get_closest_marker("slow") is None))


@pytest.fixture(autouse=True)
def _logging_left_as_it_was() -> Iterator[None]:
    """A script's Hydra main run in process (runpy) applies its `hydra/job_logging`: `disabled` disables every logger
    that exists (the tests after it, caplog, would see nothing) and `run_log` gives the root, Lightning's and our
    loggers a file handler on <run_dir>/train.log (a run refused with a user error leaves no run directory: a later
    test's log record fails to reopen the file). Each test leaves every logger as it found it: its level, `disabled`,
    `propagate` and handlers; a handler the test added is closed."""

    def loggers() -> dict[str, logging.Logger]:
        found = {name: lg for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
        return {"": logging.getLogger(), **found}

    before = {name: (lg.level, lg.disabled, lg.propagate, list(lg.handlers)) for name, lg in loggers().items()}
    yield
    added: set[logging.Handler] = set()
    for name, lg in loggers().items():
        level, disabled, propagate, handlers = before.get(name, (logging.NOTSET, False, True, []))
        added.update(h for h in lg.handlers if h not in handlers)
        lg.setLevel(level)
        lg.disabled, lg.propagate = disabled, propagate
        lg.handlers[:] = handlers
    for handler in added:
        handler.close()


@pytest.fixture(autouse=True)
def _torch_left_as_it_was() -> Iterator[None]:
    """Process-wide torch settings a test may change leave with it: the thread count (a bare `import ffcv` sets it to
    1; a later run compared with a subprocess run would compute with other sums) and deterministic algorithms
    (Lightning's `Trainer(deterministic=True)` turns them on for the process and never off)."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def sample_root(cache_dir: Path) -> Path:
    return write_sample_set(cache_dir / "sample_digits_32")


@pytest.fixture
def tiny_cfg(tmp_path: Path, cache_dir: Path, sample_root: Path) -> Callable[..., DictConfig]:
    def make(*overrides: str, config_name: str = "train") -> DictConfig:
        return compose_config([*tiny_overrides(tmp_path / "run", cache_dir), *overrides], config_name)

    return make


SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """A real one-node SLURM cluster on localhost (scripts/slurm_local.sh), started once per session and stopped at
    its end (unless it was already up); yields the partition name. Skips, naming what is missing, only where the
    SLURM binaries are absent (.ci/run installs them, so CI never skips)."""
    missing = [b for b in SLURM_BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(
            f"SLURM binaries not installed: {', '.join(missing)} (apt-get install slurmctld slurmd slurm-client munge)"
        )
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster is started as root")
    script = ROOT / "scripts" / "slurm_local.sh"
    already_up = subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 0
    subprocess.run(["bash", str(script), "start"], check=True, timeout=120)
    try:
        yield "debug"
    finally:
        if not already_up:  # stop only a cluster this session started: another may be using one that was up
            subprocess.run(["bash", str(script), "stop"], check=False, timeout=60)


class TrainedRun(NamedTuple):
    run_dir: Path
    results: dict[str, Any]
    printed_config: str  # what `print_config=true` printed

    @property
    def ckpt(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"


TRAINED_RUN_EPOCHS, TRAINED_RUN_BATCHES = 2, 4


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, sample_root: Path) -> TrainedRun:
    """The one real training run of the session, shared by the evaluation, export, report and resume tests: the
    default ResNet-18 on the sample set, 2 epochs of 4 batches, with EMA weights (decay 0.9). Read it, never write
    into it: a test that resumes or evaluates into a run directory copies it first (`copy_run`)."""
    run_dir = tmp_path_factory.mktemp("trained_run") / "run"
    overrides = [
        *tiny_overrides(run_dir, cache_dir),
        f"trainer.max_epochs={TRAINED_RUN_EPOCHS}",
        f"trainer.limit_train_batches={TRAINED_RUN_BATCHES}",
        "ema.decay=0.9",
        "print_config=true",
    ]
    from trainer.train import train  # imported here: Lightning loads only for sessions that train

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = train(compose_config(overrides))
    return TrainedRun(run_dir, results, printed.getvalue())
