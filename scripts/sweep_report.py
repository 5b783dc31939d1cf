#!/usr/bin/env python
"""Collect a sweep (`python train.py -m ...`) into one table and one plot.

    python scripts/sweep_report.py runs/multirun/2026-12-01/16-00-00            # writes sweep_report.{md,csv,png}
    python scripts/sweep_report.py <multirun dir> --out reports/compound      # elsewhere

One row per job directory (Hydra's `<sweep dir>/<job num>`, whatever the launcher): the swept values, and for a
compound-scaling sweep alpha, beta, gamma, phi and the closed-form multipliers d = alpha^phi, w = beta^phi,
r = gamma^phi beside what was built: the input resolution the run used and the network's blocks; then parameters,
GMACs (measured on the meta device at the run's resolution), top-1, top-5, training time and the status. A point
that crashed is listed as failed with its error (its `failed.json`), one that never finished as missing. The plot
is top-1 against GMACs, each (alpha, beta, gamma) family joined by a line in order of phi (the paper's Figure 1).
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt
from omegaconf import DictConfig, OmegaConf

from trainer.errors import DataError, UserError
from trainer.io import atomic_write, atomic_write_text
from trainer.models.complexity import count_macs, meta_model
from trainer.resolve import resolve_config
from trainer.sweeps import is_finite, multipliers, read_outcome

COMPOUND_COLUMNS = (
    "alpha",
    "beta",
    "gamma",
    "phi",
    "depth_mult",
    "width_mult",
    "resolution_mult",
    "resolution",
    "blocks",
)
RESULT_COLUMNS = ("params", "gmacs", "top1", "top5", "time_s", "status", "error")


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Hydra's job directories under a multirun directory, in job order."""
    if not sweep_dir.is_dir():
        raise DataError(f"sweep directory '{sweep_dir}' does not exist")
    jobs = [p.parent.parent for p in sweep_dir.rglob(".hydra/config.yaml")]
    if not jobs:
        raise DataError(f"'{sweep_dir}' holds no sweep jobs (no */.hydra/config.yaml): pass a multirun directory")
    return sorted(jobs, key=lambda p: (len(p.parts), int(p.name) if p.name.isdigit() else math.inf, str(p)))


def _config(job: Path) -> DictConfig:
    """The job's config: train()'s resolved config.yaml (data defaults filled) where it got that far, else Hydra's."""
    written = job / "config.yaml"
    cfg = OmegaConf.load(written if written.is_file() else job / ".hydra" / "config.yaml")
    return cfg


def _overrides(job: Path) -> dict[str, str]:
    path = job / ".hydra" / "overrides.yaml"
    items = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else []
    return dict(str(o).lstrip("+~").split("=", 1) for o in items if "=" in str(o))


def _measure(cfg: DictConfig) -> dict[str, Any]:
    """Resolution, blocks and MACs of the job's network as built (meta device: shapes only, nothing allocated)."""
    try:
        cfg = resolve_config(cfg)
        kwargs = dict(cfg.model.get("kwargs") or {})
        net = meta_model(cfg.model.name, num_classes=int(cfg.data.get("num_classes") or 1000), **kwargs)
        blocks = sum(len(stage) for stage in net.blocks) if hasattr(net, "blocks") else None
        gmacs = count_macs(net, cfg.data.resolution) / 1e9
        return {"resolution": int(cfg.data.resolution), "blocks": blocks, "gmacs": gmacs}
    except (UserError, ValueError, TypeError, RuntimeError) as e:  # a point whose network cannot be built
        return {"measure_error": str(e).splitlines()[0]}


def collect(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, columns) of the sweep's table."""
    jobs = job_dirs(sweep_dir)
    overrides = [_overrides(j) for j in jobs]
    keys = list(dict.fromkeys(k for o in overrides for k in o))
    swept = [k for k in keys if len({o.get(k) for o in overrides}) > 1]
    rows: list[dict[str, Any]] = []
    for job, over in zip(jobs, overrides, strict=True):
        cfg = _config(job)
        outcome = read_outcome(job)
        row: dict[str, Any] = {"job": job.relative_to(sweep_dir).as_posix(), **{k: over.get(k) for k in swept}}
        sweep = cfg.get("sweep") or {}
        compound = cfg.model.name == "efficientnet_compound" and "phi" in sweep
        measured = _measure(cfg)
        if compound:
            point = {k: float(OmegaConf.select(cfg, f"sweep.{k}")) for k in ("alpha", "beta", "gamma", "phi")}
            row.update(point, **multipliers(**point))
        row.update({k: measured.get(k) for k in ("resolution", "blocks", "gmacs")})
        error = outcome.get("error") or ("" if outcome["status"] == "ok" else measured.get("measure_error", ""))
        row.update(
            params=outcome.get("params"),
            top1=outcome.get("top1"),
            top5=outcome.get("top5"),
            time_s=outcome.get("wall_time_s"),
            status=outcome["status"],
            error=error,
        )
        rows.append(row)
    is_compound = any("phi" in r for r in rows)
    middle = [c for c in COMPOUND_COLUMNS if c not in ("resolution", "blocks")] if is_compound else []
    columns = ["job", *[k for k in swept if k not in {f"sweep.{c}" for c in middle}], *middle]
    columns += ["resolution", "blocks"] if any(r.get("blocks") is not None for r in rows) else ["resolution"]
    return rows, [*columns, *RESULT_COLUMNS]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace("|", "\\|")


def markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Top-1 against GMACs; points of one (alpha, beta, gamma) joined in order of phi."""
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    done = [r for r in rows if r["status"] == "ok" and is_finite(r.get("gmacs")) and is_finite(r.get("top1"))]
    families: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in done:
        families.setdefault((r.get("alpha"), r.get("beta"), r.get("gamma")), []).append(r)
    for (alpha, beta, gamma), members in families.items():
        members.sort(key=lambda r: (r.get("phi") or 0, r["gmacs"]))
        compound = alpha is not None
        label = f"alpha={alpha:g}, beta={beta:g}, gamma={gamma:g}" if compound else "sweep points"
        style = "o-" if compound and len(members) > 1 else "o"
        ax.plot([r["gmacs"] for r in members], [r["top1"] for r in members], style, label=label)
        for r in members:
            if r.get("phi") is not None and len(members) > 1:
                ax.annotate(f"phi={r['phi']:g}", (r["gmacs"], r["top1"]), textcoords="offset points", xytext=(4, 4))
    failed = sum(r["status"] != "ok" for r in rows)
    title = "top-1 vs GMACs" + (f" ({failed} failed)" if failed else "")
    ax.set(xlabel="GMACs per image", ylabel="top-1 (%)", title=title)
    if families:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def write_report(sweep_dir: Path, out: Path | None = None) -> tuple[list[dict[str, Any]], Path]:
    """Write `<out>.md`, `.csv` and `.png` (default `<sweep_dir>/sweep_report.*`); returns (rows, the .md path)."""
    rows, columns = collect(sweep_dir)
    base = out if out is not None else sweep_dir / "sweep_report"
    base.parent.mkdir(parents=True, exist_ok=True)
    md = base.with_suffix(".md")
    text = markdown(rows, columns)
    atomic_write_text(md, text)
    with atomic_write(base.with_suffix(".csv"), newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, base.with_suffix(".png"))
    return rows, md


def main(argv: list[str] | None = None) -> None:
    from trainer.cli import user_errors

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (hydra.sweep.dir)")
    parser.add_argument("--out", type=Path, default=None, help="output path, no suffix (default <dir>/sweep_report)")
    args = parser.parse_args(argv)
    with user_errors():
        rows, md = write_report(args.sweep_dir, args.out)
    print(md.read_text(), end="")
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows)} points ({failed} failed or missing): {md.with_suffix('')}.{{md,csv,png}}")


if __name__ == "__main__":
    main()
