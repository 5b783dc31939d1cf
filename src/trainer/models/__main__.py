"""`python -m trainer.models [pattern] [--macs]`: the catalogue as a table, as wide as the terminal.

Parameters come from the catalogue (each entry's count is checked against the built model by the tests), so the
table prints at once. Multiply-adds are counted only with `--macs` (a meta-device forward per model, most of a
minute for the whole catalogue), and then kept in `<cache>/complexity.json` (keyed by the torch and timm versions),
so the next `--macs` prints at once too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import timm
import torch
from rich.console import Console
from rich.table import Table

from trainer.models import get_entry, list_models
from trainer.models.complexity import complexity


def cache_file() -> Path:
    """The user cache (paths.cache_dir's default: $TRAINER_CACHE, else ~/.cache/trainer)."""
    root = os.environ.get("TRAINER_CACHE") or Path(os.environ.get("HOME", ".")) / ".cache" / "trainer"
    return Path(root) / "complexity.json"


def cached_macs(names: list[str], path: Path | None = None) -> dict[str, int]:
    """Multiply-adds of each model at its native resolution, from the cache where present, counted (and the cache
    rewritten atomically) where not."""
    path = path or cache_file()
    key = f"torch {torch.__version__}, timm {timm.__version__}"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    known = cache.get(key, {})
    missing = [n for n in names if n not in known]
    for name in missing:
        known[name] = complexity(name).macs
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({key: known}, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
    return {n: known[n] for n in names}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer.models", description=__doc__.splitlines()[0])
    parser.add_argument("pattern", nargs="?", default=None, help="shell-style wildcard, e.g. 'resnet*'")
    parser.add_argument("--macs", action="store_true", help="add multiply-adds (counted once, then cached)")
    args = parser.parse_args(argv)
    names = list_models(args.pattern)
    macs = cached_macs(names) if args.macs else {}
    width = shutil.get_terminal_size().columns  # COLUMNS where set; 80 when piped
    # the columns that fit: a narrow terminal gets name, size, input and accuracy; wider ones the paper and recipe
    wide = width >= 110
    table = Table(title="model catalogue (model=<name>; any timm model: model=timm/<name>)")
    columns = [
        "name",
        *(["family", "paper"] if wide else []),
        "params (M)",
        "aux (M)",
        *(["GMACs"] if macs else []),
        "res",
        "crop",
        "top-1",
        *(["recipe"] if width >= 130 else []),
    ]
    for column in columns:
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    for name in names:
        e = get_entry(name)
        cells = {
            "name": name,
            "family": e.family,
            "paper": f"{e.paper.authors.split(',')[0].split()[-1]} {e.paper.year}",
            "params (M)": f"{e.params / 1e6:.2f}",  # the inference network; auxiliary heads apart
            "aux (M)": f"{e.aux_params / 1e6:.2f}" if e.aux_params else "-",
            "GMACs": f"{macs[name] / 1e9:.2f}" if macs else "",
            "res": str(e.resolution),
            "crop": f"{e.crop_ratio:g}",
            "top-1": f"{e.top1:.2f}" if e.top1 is not None else "-",
            "recipe": e.recipe,
        }
        table.add_row(*(cells[c] for c in columns))
    Console(width=width).print(table)


if __name__ == "__main__":
    main()
