"""`python -m trainer.models [pattern] [--macs]`: the catalogue as a table, as wide as the terminal.

Parameters come from the catalogue (each entry's count is checked against the built model by the tests), so the
table prints at once: at 1000 classes, and a CIFAR network's at 10 classes, as its paper's tables count it. A listing
of CIFAR networks adds the test errors their papers report (C10, C100: without augmentation; C10+, C100+: with);
beside ImageNet networks, only where the terminal is wide enough. Multiply-adds are counted only with `--macs` (a
meta-device forward per model, most of a minute for the whole catalogue), and then kept in
`<cache>/complexity.json` (keyed by the torch and timm versions), so the next `--macs` prints at once too.
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

from trainer.io import atomic_write_text
from trainer.models import get_entry, list_models
from trainer.models.catalogue import CIFAR_PROTOCOLS
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
        atomic_write_text(path, json.dumps({key: known}, indent=1, sort_keys=True) + "\n")
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
    entries = [get_entry(name) for name in names]
    cifar = any(e.cifar_error for e in entries)  # the CIFAR networks: their papers' errors, per protocol
    imagenet = any(not e.cifar_error for e in entries)
    errors = cifar and (not imagenet or width >= 160)  # beside the ImageNet columns only where all fit
    caption = None
    if cifar:
        caption = "params at 1000 classes, CIFAR networks' at 10" if imagenet else "params at 10 classes"
        caption += (
            "; C10 / C100: the paper's CIFAR test error (%) without augmentation, C10+ / C100+: with"
            if errors
            else "; the papers' CIFAR errors: python -m trainer.models '*cifar*'"
        )
    table = Table(title="model catalogue (model=<name>; any timm model: model=timm/<name>)", caption=caption)
    columns = [
        "name",
        *(["family", "paper"] if wide else []),
        "params (M)",
        *(["aux (M)"] if imagenet else []),
        *(["GMACs"] if macs else []),
        "res",
        *(["crop", "top-1"] if imagenet else []),
        *(CIFAR_PROTOCOLS if errors else []),
        *(["recipe"] if width >= 130 else []),
    ]
    for column in columns:
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    for name, e in zip(names, entries, strict=True):
        params = e.cifar_params or e.params  # the inference network (auxiliary heads apart), CIFAR's at 10 classes
        cells = {
            "name": name,
            "family": e.family,
            "paper": f"{e.paper.authors.split(',')[0].split()[-1]} {e.paper.year}",
            "params (M)": f"{params / 1e6:.2f}",
            "aux (M)": f"{e.aux_params / 1e6:.2f}" if e.aux_params else "-",
            "GMACs": f"{macs[name] / 1e9:.2f}" if macs else "",
            "res": str(e.resolution),
            "crop": f"{e.crop_ratio:g}",
            "top-1": f"{e.top1:.2f}" if e.top1 is not None else "-",
            "recipe": e.recipe,
            **{p: f"{e.cifar_error[p]:.2f}" if p in e.cifar_error else "-" for p in CIFAR_PROTOCOLS},
        }
        table.add_row(*(cells[c] for c in columns))
    Console(width=width).print(table)


if __name__ == "__main__":
    main()
