"""`python -m trainer.models [pattern]`: the catalogue as a table."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from trainer.models import get_entry, list_models
from trainer.models.complexity import complexity


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer.models", description=__doc__)
    parser.add_argument("pattern", nargs="?", default=None, help="shell-style wildcard, e.g. 'resnet*'")
    args = parser.parse_args(argv)
    table = Table(title="model catalogue (model=<name>; any timm model: model=timm/<name>)")
    columns = (
        "name",
        "family",
        "paper",
        "params (M)",
        "aux (M)",
        "GMACs",
        "resolution",
        "crop",
        "paper top-1",
        "recipe",
        "source",
    )
    for column in columns:
        table.add_column(column)
    for name in list_models(args.pattern):
        e = get_entry(name)
        top1 = f"{e.top1:.2f} ({e.protocol})" if e.top1 is not None else "-"
        params, aux, macs = complexity(name)  # measured, not stored: the inference network, auxiliary heads apart
        table.add_row(
            name,
            e.family,
            f"{e.paper.authors.split(',')[0]} et al. {e.paper.year}",
            f"{params / 1e6:.2f}",
            f"{aux / 1e6:.2f}" if aux else "-",
            f"{macs / 1e9:.2f}",
            str(e.resolution),
            f"{e.crop_ratio:g}",
            top1,
            e.recipe,
            e.source,
        )
    console = Console()
    if not console.is_terminal:  # piped or captured: no wrapping, the table is for reading or grepping
        console = Console(width=220)
    console.print(table)


if __name__ == "__main__":
    main()
