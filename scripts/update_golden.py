"""Add catalogue entries missing from tests/golden/complexity.json: multiply-adds at each entry's native resolution,
measured on the meta device.

    python scripts/update_golden.py            # add the rows of entries not in the file yet
    python scripts/update_golden.py googlenet  # re-measure named rows (only after changing an architecture on purpose)

Existing rows are never rewritten unless named: the golden file is what the tests hold the models to.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.models import get_entry, list_models
from trainer.models.complexity import complexity

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "complexity.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="catalogue names to re-measure")
    args = parser.parse_args(argv)
    data = json.loads(GOLDEN.read_text())
    rows: dict[str, dict[str, int]] = data["models"]
    for name in args.names:
        get_entry(name)  # an unknown name fails with close matches
    todo = [n for n in list_models() if n not in rows or n in args.names]
    for name in todo:
        resolution = get_entry(name).resolution
        macs = complexity(name, resolution).macs
        rows[name] = {"resolution": resolution, "macs": macs}
        print(f"{name}: {macs / 1e9:.3f} GMACs at {resolution} px")
    stale = sorted(set(rows) - set(list_models()))
    for name in stale:
        del rows[name]
        print(f"{name}: removed (not in the catalogue)")
    body = ",\n".join(f'    "{n}": {json.dumps(r, separators=(", ", ": "))}' for n, r in rows.items())
    GOLDEN.write_text(f'{{\n  "about": {json.dumps(data["about"])},\n  "models": {{\n{body}\n  }}\n}}\n')


if __name__ == "__main__":
    main()
