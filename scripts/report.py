#!/usr/bin/env python
"""Tabulate training runs and their evaluations beside the papers' numbers.

    python scripts/report.py runs/                       # every run under runs/ (any depth)
    python scripts/report.py runs/a runs/b --out report  # named runs; writes report.md and report.csv

One row per evaluation (`eval_<protocol>.json` written by evaluate.py) of each run, or one row from the run's own
last validation (`results.json`, protocol "center") where it has none. The paper's top-1/top-5 come from the model's
catalogue entry, or from the recipe's `recipe_info` when the entry has none; nothing is retyped here. A CIFAR run is
compared with the test error of its protocol (C10, C10+, C100, C100+) that the recipe's paper reports for the model
(`recipe_info.cifar_error`), else the one its catalogue entry holds.

A run is compared with the paper only when it trained on the paper's data: ImageNet-1k (1000 classes, not the
bundled sample) at the paper's resolution, or CIFAR for a CIFAR entry. Other runs (the digits sample set, a data
set of your own) are listed without paper numbers, and the markdown table drops the paper columns when no row has
them. A run directory with a config.yaml but no results.json is listed with status "failed" (it stopped before its
end, or is still running).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.errors import ConfigError
from trainer.models import get_entry
from trainer.models.catalogue import TIMM_PREFIX
from trainer.models.complexity import count_macs, meta_model

COLUMNS = (
    "model",
    "recipe",
    "epochs",
    "status",
    "protocol",
    "top1",
    "top5",
    "paper_top1",
    "diff_top1",
    "paper_top5",
    "diff_top5",
    "paper_protocol",
    "params",
    "gmacs",
    "train_time_s",
    "images_per_sec",
    "run",
)


PAPER_COLUMNS = ("paper_top1", "diff_top1", "paper_top5", "diff_top5", "paper_protocol")


def _is_run(path: Path) -> bool:
    return (path / "results.json").is_file() or ((path / "config.yaml").is_file() and path.name != ".hydra")


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories (finished or failed): each path that is one, else every folder below it that is."""
    runs: list[Path] = []
    for path in paths:
        if _is_run(path):
            runs.append(path)
        else:
            found = {p.parent for name in ("results.json", "config.yaml") for p in path.rglob(name)}
            runs += sorted(p for p in found if _is_run(p))
    return sorted(dict.fromkeys(runs))


def on_paper_data(model: str, cfg: DictConfig) -> bool:
    """Whether the run's data is the data set the paper's figure is for (see the module docstring)."""
    data = cfg.get("data") or {}
    if data.get("sample") or model.startswith(TIMM_PREFIX):
        return False
    try:
        entry = get_entry(model)
    except ConfigError:
        return False
    classes, where = data.get("num_classes"), f"{data.get('_target_', '')} {data.get('root', '')}".lower()
    if "cifar" in entry.name or "cifar" in entry.family:
        return "cifar" in where and classes in (10, 100)
    return classes == 1000 and data.get("resolution") == entry.resolution


def cifar_protocol(cfg: DictConfig) -> str | None:
    """The CIFAR protocol a run's data is (C10, C10+, C100, C100+; "+": trained with the pad-crop-flip augmentation),
    or None when its data is not CIFAR."""
    dataset = cfg.data.get("dataset")
    if dataset not in ("cifar10", "cifar100") or cfg.data.get("label_type", "fine") != "fine":
        return None
    augmented = cfg.get("augment") is not None and cfg.augment.get("crop") not in (None, "none")
    return ("C10" if dataset == "cifar10" else "C100") + ("+" if augmented else "")


def paper_figure_for_data(model: str, cfg: DictConfig) -> tuple[float | None, str | None] | None:
    """For a run on CIFAR: (the paper's top-1, its protocol) for `model` on that protocol, (None, None) where the
    paper gives none; None for a run on other data (the catalogue's and recipe's figures apply).

    The paper is the recipe's where the recipe lists the model in `recipe_info.cifar_error` (stochastic depth's
    ResNet-110 is compared with Huang et al.'s 5.25 %, not He et al.'s 6.43 %), else the model's catalogue paper
    (no recipe, or a recipe written for another family)."""
    protocol = cifar_protocol(cfg)
    if protocol is None:
        return None
    info = cfg.get("recipe_info") or {}
    recipe_errors = (info.get("cifar_error") or {}).get(model)
    if recipe_errors is not None:  # the recipe's paper trained this network: its figure, or none for this protocol
        error = recipe_errors.get(protocol)
        source = f"{info.authors.split(',')[0]} et al. {info.year}, recipe {info.name}"
    else:
        try:
            entry = None if model.startswith(TIMM_PREFIX) else get_entry(model)
        except ConfigError:
            entry = None
        error = entry.cifar_error.get(protocol) if entry is not None else None
        source = f"{entry.paper.authors.split(',')[0]} et al. {entry.paper.year}" if entry is not None else ""
    if error is None:
        return None, None
    return round(100.0 - error, 2), f"{protocol} test error {error} % ({source})"


def paper_numbers(model: str, cfg: DictConfig) -> tuple[float | None, float | None, str | None]:
    """(top-1, top-5, protocol) the paper reports for `model`: on CIFAR, the paper's figure for the run's protocol
    (paper_figure_for_data); else its catalogue entry, else the recipe's recipe_info."""
    cifar = paper_figure_for_data(model, cfg)
    if cifar is not None:
        return cifar[0], None, cifar[1]
    if not model.startswith(TIMM_PREFIX):
        try:
            entry = get_entry(model)
        except ConfigError:
            entry = None
        if entry is not None and entry.top1 is not None:
            return entry.top1, entry.top5, entry.protocol
    info = cfg.get("recipe_info")
    if info and info.get("model") == model and info.get("top1") is not None:
        return info.top1, info.get("top5"), info.get("protocol")
    return None, None, None


def _gmacs(model: str, cfg: DictConfig) -> float | None:
    try:
        num_classes = int(cfg.data.get("num_classes") or 1000)
        net = meta_model(model, num_classes=num_classes, **dict(cfg.model.get("kwargs") or {}))
        return count_macs(net, int(cfg.data.resolution)) / 1e9
    except Exception:  # a model that cannot be built on the meta device: leave the cell empty
        return None


def _diff(value: float | None, paper: float | None) -> float | None:
    return None if value is None or paper is None else value - paper


def run_rows(run: Path) -> list[dict[str, Any]]:
    cfg = OmegaConf.load(run / "config.yaml")
    model = str(cfg.model.name)
    if not (run / "results.json").is_file():  # stopped before its end (or still running)
        return [{**dict.fromkeys(COLUMNS), "model": model, "status": "failed", "run": str(run)}]
    results = json.loads((run / "results.json").read_text())
    compared = on_paper_data(model, cfg)
    paper_top1, paper_top5, paper_protocol = paper_numbers(model, cfg) if compared else (None, None, None)
    common = {
        "model": model,
        "recipe": cfg.recipe_info.name if cfg.get("recipe_info") else "",
        "epochs": results.get("epochs"),
        "status": "done",
        "paper_top1": paper_top1,
        "paper_top5": paper_top5,
        "paper_protocol": paper_protocol,
        "params": results.get("params"),
        "gmacs": _gmacs(model, cfg),
        "train_time_s": results.get("wall_time_s"),
        "run": str(run),
    }
    evaluations = []
    for path in sorted(run.glob("eval_*.json")):
        data = json.loads(path.read_text())
        if "protocol" in data and not path.stem.endswith("_confusion"):
            evaluations.append(data)
    # runs evaluated by older versions also hold the centre-crop result as eval_<split>.json: count it once
    unique = {(e["protocol"], e.get("split"), e.get("ckpt_sha256"), e.get("weights")): e for e in evaluations}
    sources = list(unique.values()) or [dict(results, protocol="center")]
    return [
        {
            **common,
            "protocol": e["protocol"],
            "top1": e.get("top1"),
            "top5": e.get("top5"),
            "diff_top1": _diff(e.get("top1"), paper_top1),
            "diff_top5": _diff(e.get("top5"), paper_top5),
            "images_per_sec": e.get("images_per_sec"),
        }
        for e in sources
    ]


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:+.2f}" if column.startswith("diff_") else f"{value:.2f}"
    return str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table; without the paper columns where no run is on the paper's data."""
    compared = any(row.get("paper_top1") is not None for row in rows)
    columns = [c for c in COLUMNS if compared or c not in PAPER_COLUMNS]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(c, row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="run directories, or folders holding runs")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.md and <out>.csv")
    args = parser.parse_args(argv)
    runs = find_runs(args.paths)
    if not runs:
        parser.exit(
            2, f"error: no run (a folder with results.json or config.yaml) under {', '.join(map(str, args.paths))}\n"
        )
    rows = [row for run in runs for row in run_rows(run)]
    table = markdown(rows)
    print(table, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(table)
        with open(args.out.with_suffix(".csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
