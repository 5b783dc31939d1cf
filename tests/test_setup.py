"""The installed environment is the one constraints.txt pins (what scripts/setup.sh and CI install): a newer Pillow,
timm, Lightning, torch or ffcv cannot slip in unseen (issue 24: a new Pillow broke timm's AutoAugment)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pytest
from packaging.requirements import Requirement

from tests.helpers import ROOT

# the libraries whose behaviour or private members the project depends on
WATCHED = (
    "torch",
    "torchvision",
    "lightning",
    "timm",
    "hydra-core",
    "torchmetrics",
    "pillow",
    "numpy",
    "ffcv",
    "numba",
)


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            out[req.name.lower()] = spec.version
    return out


@pytest.mark.unit
def test_constraints_pin_the_watched_libraries_to_what_is_installed() -> None:
    pinned = pins()
    for name in WATCHED:
        assert name in pinned, f"constraints.txt does not pin {name}"
        try:
            installed = version(name)
        except PackageNotFoundError:
            if name in ("ffcv", "numba"):  # setup without the FFCV system packages skips the ffcv extra
                continue
            raise
        assert installed.split("+")[0] == pinned[name].split("+")[0], (
            f"{name} {installed} is installed but constraints.txt pins {pinned[name]}: run scripts/setup.sh, or "
            "after a deliberate upgrade regenerate constraints.txt and rerun the tests"
        )
