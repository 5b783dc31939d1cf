"""Helpers the tests share (fixtures stay in conftest.py): the config composed as train.py composes it, the
overrides that shrink a run for tests, and the DDP/data helpers several test files use. Tests import from here,
never from conftest.py or from each other."""

from __future__ import annotations

import csv
import runpy
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from trainer.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
PYTHON = sys.executable


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The config train.py / evaluate.py would run with these command-line overrides."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def group_options(group: str) -> set[str]:
    """The options of a config group (`model`, `data`, ...) as Hydra lists them for `group=<option>` on the command
    line: the conf/ files, the options stored in code (config.register_configs) and the plugins' (no compose)."""
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return set(GlobalHydra.instance().config_loader().get_group_options(group))


def slow_unless(values: Sequence, fast: set) -> list:
    """Parametrize values for a check run per network: those in `fast` as they are, the others marked `slow`, so
    `make test-fast` runs the check on a few networks and `make test` (CI) on all of them."""
    assert set(fast) <= set(values), f"not among the values: {sorted(set(fast) - set(values))}"
    return [v if v in fast else pytest.param(v, marks=pytest.mark.slow) for v in values]


def lightest_per_family(names: Sequence[str]) -> set[str]:
    """The catalogue entry with the fewest parameters in each family among `names`."""
    from trainer.models import get_entry

    lightest: dict[str, str] = {}
    for name in names:
        family = get_entry(name).family
        if family not in lightest or get_entry(name).params < get_entry(lightest[family]).params:
            lightest[family] = name
    return set(lightest.values())


def ffcv_or_skip() -> None:
    """Import ffcv as the project does (trainer.data.ffcv.format.require_ffcv: torch's thread count kept, which a
    bare `import ffcv` sets to 1 for the whole process), or skip the test naming what is missing."""
    from trainer.data.ffcv.format import require_ffcv
    from trainer.errors import ConfigError

    try:
        require_ffcv("this test")
    except ConfigError as exc:
        pytest.skip(str(exc))


def tiny_overrides(run_dir: Path, cache_dir: Path) -> list[str]:
    """Shrink a run for tests: CPU, no progress bar, no worker processes, a few batches."""
    return [
        f"run_dir={run_dir}",
        f"paths.cache_dir={cache_dir}",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.enable_progress_bar=false",
        "data.num_workers=0",
        "trainer.max_epochs=1",
    ]


def odd_val_root(sample_root: Path, dest: Path, drop: int = 1) -> Path:
    """The sample set with `drop` val images removed: 360 - drop, not divisible by 2 (the training split linked)."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "train").symlink_to(sample_root / "train")
    shutil.copytree(sample_root / "val", dest / "val")
    for image in sorted((dest / "val" / "0").iterdir())[:drop]:
        image.unlink()
    return dest


def data_overrides(root: Path) -> list[str]:
    return [f"data.root={root}", "data.sample=false", "data.num_classes=10"]


def ddp_args(run_dir: Path, cache_dir: Path, data: list[str]) -> list[str]:
    """A 3-step run of timm/resnet10t on 2 gloo processes (train.py overrides)."""
    return [
        *tiny_overrides(run_dir, cache_dir),
        *data,
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.limit_train_batches=3",
        "model=timm/resnet10t",
    ]


def run_train(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def run_script(script: str, *args: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """A script's `__main__` in process (runpy with its sys.argv), the same code as `python <script> <args>` without
    another torch import: (exit status, stdout, stderr). For its error paths; each script also runs through a real
    interpreter in some test."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    """A run's metrics.csv (Lightning's CSVLogger), one dict per row."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def logged(run_dir: Path, key: str) -> list[float]:
    """The values metrics.csv holds for `key`, in the order they were logged."""
    return [float(r[key]) for r in metrics_rows(run_dir) if r.get(key)]


def copy_run(run_dir: Path, dest: Path, checkpoints_only: bool = False) -> Path:
    """A copy of a run directory (the session's `trained_run` is shared: tests that resume or evaluate into a run
    directory work on a copy). checkpoints_only: just checkpoints/last.ckpt."""
    if checkpoints_only:
        (dest / "checkpoints").mkdir(parents=True)
        shutil.copy2(run_dir / "checkpoints" / "last.ckpt", dest / "checkpoints" / "last.ckpt")
        return dest
    shutil.copytree(run_dir, dest)
    return dest
