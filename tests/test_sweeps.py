"""Sweeps: the compound-scaling grid (Tan & Le 2019, Sec. 3.3), the `trainer` sweeper run through train.py with the
local and the SLURM launcher, and scripts/sweep_report.py over what they wrote."""

from __future__ import annotations

import csv
import itertools
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext
from omegaconf import OmegaConf
from PIL import Image

from tests.helpers import ROOT, compose_config, run_script
from trainer.builders import build_model
from trainer.errors import ConfigError
from trainer.resolve import resolve_config
from trainer.sweeps import COMPOUND_KEYS, check_point, compound_product, satisfies

GRID_CONFIG = OmegaConf.load(ROOT / "conf" / "sweep" / "compound_grid.yaml")
B0_REPEATS = (1, 2, 2, 3, 3, 4, 1)  # EfficientNet-B0's stage repeats (Table 1)


def _axis(key: str) -> list[float]:
    return [float(v) for v in GRID_CONFIG.hydra.sweeper.params[key].split(",")]


PAPER_GRID = [_axis(f"sweep.{k}") for k in ("alpha", "beta", "gamma")]


def _sweeper_class() -> type:
    """`hydra/sweeper=trainer`'s class as Hydra instantiates it: from Hydra's plugin scan, which executes the plugin
    modules again (a class imported before the scan subclasses a BasicSweeper the scan has since replaced)."""
    return next(c for c in Plugins.instance().discover(Sweeper) if c.__name__ == "TrainerSweeper")


def _grid_points(
    alphas: list[float], betas: list[float], gammas: list[float], target: float = 2.0, tolerance: float = 0.1
) -> list[tuple[float, float, float]]:
    """The (alpha, beta, gamma) that `hydra/sweeper=trainer` with `compound: grid` runs, in its order: the sweeper's
    own selection, in process (the dry run below checks the command line lists the same)."""
    params = {key: ",".join(map(str, axis)) for key, axis in zip(COMPOUND_KEYS, (alphas, betas, gammas), strict=True)}
    sweeper = _sweeper_class()(params=params, compound="grid", target=target, tolerance=tolerance)
    sweeper.hydra_context = HydraContext(config_loader=None, callbacks=None)  # only the override parser reads it
    sweeper.config = OmegaConf.create({"sweep": {"phi": 1.0}})
    return [tuple(float(o.partition("=")[2]) for o in job) for job in sweeper.points([])]


@pytest.mark.unit
@pytest.mark.parametrize("tolerance", [0.04, 0.1, 0.3])
@pytest.mark.parametrize("target", [1.5, 2.0])
def test_grid_emits_exactly_the_points_within_the_constraint(target: float, tolerance: float) -> None:
    grid = [[0.95, 1.0, 1.1, 1.2, 1.3, 1.4], [1.0, 1.05, 1.1, 1.15, 1.2], [0.9, 1.0, 1.1, 1.15, 1.2]]
    emitted = _grid_points(*grid, target=target, tolerance=tolerance)
    for a, b, g in emitted:
        assert min(a, b, g) >= 1 and abs(a * b**2 * g**2 - target) <= tolerance + 1e-9
    outside = set(itertools.product(*grid)) - set(emitted)
    for a, b, g in outside:
        assert min(a, b, g) < 1 or abs(a * b**2 * g**2 - target) > tolerance
    assert len(emitted) == len(set(emitted))


@pytest.mark.unit
def test_the_papers_point_is_on_the_configured_grid() -> None:
    target, tolerance = GRID_CONFIG.sweep.target, GRID_CONFIG.sweep.tolerance
    points = _grid_points(*PAPER_GRID, target=target, tolerance=tolerance)
    assert (1.2, 1.1, 1.15) in points
    assert compound_product(1.2, 1.1, 1.15) == pytest.approx(1.9203, abs=1e-4)


@pytest.mark.unit
def test_no_point_in_the_constraint_names_the_closest_product() -> None:
    with pytest.raises(ConfigError, match=r"closest: 1\.1025 at alpha=1, beta=1, gamma=1\.05"):
        _grid_points([1.0], [1.0], [1.0, 1.05], target=2.0, tolerance=0.1)
    with pytest.raises(ConfigError, match="every value >= 1"):
        _grid_points([0.9], [0.9], [0.9])


@pytest.mark.unit
def test_bad_points_fail() -> None:
    with pytest.raises(ConfigError, match="sweep.phi must be >= 0"):
        check_point(-1, 1.2, 1.1, 1.15)
    with pytest.raises(ConfigError, match="sweep.beta must be >= 1"):
        check_point(1, 1.2, 0.9, 1.15)
    assert not satisfies(0.99, 1.2, 1.2)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HYDRA_FULL_ERROR": "0"}


def _sweep(*overrides: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "train.py", "-m", *overrides],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tiny(tmp_path: Path, cache_dir: Path) -> list[str]:
    return [
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        f"paths.runs_dir={tmp_path}",
        f"paths.cache_dir={cache_dir}",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.enable_progress_bar=false",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2",
    ]


def _sweep_in_process(*overrides: str, capsys, monkeypatch) -> tuple[int, str, str]:
    """`train.py -m ...` through train.py's `__main__` in process (run_script): the sweeper's dry run and its refusals
    start no training, so a fresh interpreter would only add an import of torch; the sweeps that train below run
    `python train.py -m` for real."""
    monkeypatch.chdir(ROOT)
    return run_script("train.py", "-m", *overrides, capsys=capsys, monkeypatch=monkeypatch)


@pytest.mark.integration
def test_dry_run_lists_the_filtered_grid_and_runs_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    code, out, err = _sweep_in_process(
        "sweep=compound_grid",
        "sweep.dry_run=true",
        f"hydra.sweep.dir={tmp_path / 'm'}",
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    assert code == 0, err
    listed = [
        tuple(float(v) for v in m)
        for m in re.findall(r"sweep\.alpha=([\d.]+) sweep\.beta=([\d.]+) sweep\.gamma=([\d.]+)", out)
    ]
    assert listed == _grid_points(*PAPER_GRID, target=2.0, tolerance=0.1)
    assert f"sweep: {len(listed)} points (dry run" in out
    assert not (tmp_path / "m").exists()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["sweep=compound_grid", "sweep.alpha=1.0", "sweep.beta=1.0", "sweep.gamma=1.0,1.05"],
            "no (alpha, beta, gamma) has alpha*beta^2*gamma^2 within 0.1 of 2; closest: 1.1025",
        ),
        (["sweep=compound_scale", "sweep.phi=-1,1"], "sweep.phi must be >= 0"),
    ],
)
def test_bad_sweeps_fail_in_one_line(overrides: list[str], message: str, tmp_path: Path, capsys, monkeypatch) -> None:
    code, _, err = _sweep_in_process(
        *overrides, f"hydra.sweep.dir={tmp_path / 'm'}", capsys=capsys, monkeypatch=monkeypatch
    )
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "m").exists()


def _check_compound_report(
    sweep_dir: Path, expected: list[tuple[float, float, float]], base: int, capsys, monkeypatch
) -> None:
    """The report's rows: the closed form (d, w, r; resolution round(base * gamma^phi); B0's repeats rounded up).
    scripts/sweep_report.py in process (run_script); the crashing-point test runs it through a real interpreter."""
    code, _, err = run_script("scripts/sweep_report.py", str(sweep_dir), capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err
    with (sweep_dir / "sweep_report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted((float(r["alpha"]), float(r["beta"]), float(r["gamma"])) for r in rows) == sorted(expected)
    for row in rows:
        alpha, beta, gamma, phi = (float(row[k]) for k in ("alpha", "beta", "gamma", "phi"))
        assert row["status"] == "ok", row
        assert float(row["depth_mult"]) == pytest.approx(alpha**phi)
        assert float(row["width_mult"]) == pytest.approx(beta**phi)
        assert float(row["resolution_mult"]) == pytest.approx(gamma**phi)
        assert int(row["resolution"]) == round(base * gamma**phi)
        assert int(row["blocks"]) == sum(math.ceil(r * alpha**phi) for r in B0_REPEATS)
        assert float(row["gmacs"]) > 0 and int(row["params"]) > 0
        assert 0 <= float(row["top1"]) <= 100 and 0 <= float(row["top5"]) <= 100
    assert "| alpha | beta | gamma | phi |" in (sweep_dir / "sweep_report.md").read_text()
    with Image.open(sweep_dir / "sweep_report.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 100


# two points of the grid that pass the constraint (1.2*1.1^2*1.15^2 = 1.920, 1.4*1.2^2 = 2.016) among eight
TWO_POINTS = ["sweep.alpha=1.2,1.4", "sweep.beta=1.1,1.2", "sweep.gamma=1.15,1.0", "sweep.base_resolution=32"]


@pytest.mark.system
@pytest.mark.slow
def test_compound_grid_sweep_runs_locally_and_is_reported(
    tmp_path: Path, cache_dir: Path, sample_root: Path, capsys, monkeypatch
) -> None:
    proc = _sweep("sweep=compound_grid", *TWO_POINTS, *_tiny(tmp_path, cache_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.index("sweep: 2 points") < proc.stdout.index("val top-1")  # the list comes first
    _check_compound_report(tmp_path / "multirun", [(1.2, 1.1, 1.15), (1.4, 1.2, 1.0)], 32, capsys, monkeypatch)


@pytest.mark.integration
@pytest.mark.slow
def test_a_crashing_point_is_recorded_and_the_others_run(
    tmp_path: Path, cache_dir: Path, sample_root: Path, capsys, monkeypatch
) -> None:
    """The generic lr x wd sweep, in process (the compound sweeps above run `train.py -m` for real); a negative lr
    makes torch's optimizer raise in one point. Then scripts/sweep_report.py through a real interpreter."""
    overrides = ("sweep=lr_wd", "optim.lr=-1,0.1", "optim.weight_decay=1e-4", *_tiny(tmp_path, cache_dir))
    code, _, err = _sweep_in_process(*overrides, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 1, err[-3000:]
    assert "sweep: 1 of 2 points failed" in err and "Invalid learning rate" in err
    sweep_dir = tmp_path / "multirun"
    assert (sweep_dir / "1" / "results.json").is_file() and (sweep_dir / "0" / "failed.json").is_file()
    report = subprocess.run(
        [sys.executable, "scripts/sweep_report.py", str(sweep_dir)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    with (sweep_dir / "sweep_report.csv").open() as f:
        rows = {r["optim.lr"]: r for r in csv.DictReader(f)}
    assert rows["-1"]["status"] == "failed" and "Invalid learning rate" in rows["-1"]["error"]
    assert rows["0.1"]["status"] == "ok" and float(rows["0.1"]["top5"]) >= 0
    assert "failed" in (sweep_dir / "sweep_report.md").read_text()


@pytest.mark.integration
def test_a_user_error_in_a_point_is_recorded_too(
    tmp_path: Path, cache_dir: Path, sample_root: Path, capsys, monkeypatch
) -> None:
    """A UserError (here a resolution below the model's minimum) exits the task with status 2 as one line; in a
    sweep it becomes that point's failed.json, not the end of the sweep (in process: no point trains)."""
    overrides = ("sweep=compound_scale", "sweep.phi=0", "sweep.base_resolution=8,16", *_tiny(tmp_path, cache_dir))
    code, _, err = _sweep_in_process(*overrides, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 1, err[-3000:]
    assert "sweep: 2 of 2 points failed" in err
    for job in ("0", "1"):
        failed = OmegaConf.load(tmp_path / "multirun" / job / "failed.json")
        assert failed.type == "ConfigError" and "needs a resolution of at least 32 px" in failed.error


@pytest.mark.system
@pytest.mark.slow
def test_compound_sweep_through_submitit_on_slurm(
    slurm_cluster: str, tmp_path: Path, cache_dir: Path, sample_root: Path, capsys, monkeypatch
) -> None:
    """The same two-point sweep with nothing changed but the launcher: one SLURM job per point."""
    subprocess.run(["bash", str(ROOT / "scripts" / "slurm_local.sh"), "start"], check=True, timeout=120)  # shared
    proc = _sweep("sweep=compound_grid", *TWO_POINTS, *_tiny(tmp_path, cache_dir), "hydra/launcher=slurm_local")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    submitit_logs = list((tmp_path / "multirun" / ".submitit").rglob("*_log.out"))
    assert len(submitit_logs) == 2, "one SLURM job per point"
    _check_compound_report(tmp_path / "multirun", [(1.2, 1.1, 1.15), (1.4, 1.2, 1.0)], 32, capsys, monkeypatch)


@pytest.mark.unit
@pytest.mark.parametrize("sweep", ["compound_grid", "compound_scale", "lr_wd"])
def test_every_sweep_composes(sweep: str) -> None:
    cfg = compose_config([f"sweep={sweep}"])
    assert OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.unit
def test_compound_scale_resolution_and_regularisation_flow_from_phi() -> None:
    """data.resolution = round(base * gamma^phi) through the model defaults; dropout from the B0-B7 table at phi,
    drop-path from the recipe."""
    cfg = compose_config(["sweep=compound_scale", "sweep.phi=2", "sweep.base_resolution=32", "recipe=efficientnet"])
    cfg = resolve_config(cfg)
    assert cfg.data.resolution == round(32 * 1.15**2) == 42
    model = build_model(cfg, num_classes=10)
    assert model.drop_rate == 0.3 and cfg.model.drop_path_rate == 0.2
    assert sum(len(s) for s in model.blocks) == sum(math.ceil(r * 1.2**2) for r in B0_REPEATS)
