"""Sweeps: EfficientNet's compound-scaling grid (Tan & Le 2019, Sec. 3.3) and the record of each sweep point.

Step 1 of the paper's method fixes phi = 1 and searches (alpha, beta, gamma) on a small grid subject to Eq. 3,
alpha * beta^2 * gamma^2 ~= 2 with alpha, beta, gamma >= 1 (FLOPs grow by about 2^phi); step 2 fixes those bases
and scales phi up. The paper gives neither the grid nor the meaning of "~="; the reading here: a candidate runs when
|alpha * beta^2 * gamma^2 - target| <= tolerance (absolute, on the product), target 2 and tolerance 0.1 by default,
wide enough to hold the paper's own result (1.2 * 1.1^2 * 1.15^2 = 1.920).

A point's outcome lies in its job directory: `results.json` (train()), or `failed.json` (written here when the point
raised), so a report lists failed points with their error instead of leaving them out.
"""

from __future__ import annotations

import json
import math
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError, UserError
from trainer.io import atomic_write_text

COMPOUND_KEYS = ("sweep.alpha", "sweep.beta", "sweep.gamma")
PHI_KEY = "sweep.phi"
FAILED_FILE = "failed.json"


def compound_product(alpha: float, beta: float, gamma: float) -> float:
    """Eq. 3's FLOPs factor per unit of phi: alpha * beta^2 * gamma^2."""
    return alpha * beta**2 * gamma**2


def satisfies(alpha: float, beta: float, gamma: float, target: float = 2.0, tolerance: float = 0.1) -> bool:
    """Within the constraint: each base >= 1 and the product within `tolerance` of `target`."""
    in_range = min(alpha, beta, gamma) >= 1
    return in_range and abs(compound_product(alpha, beta, gamma) - target) <= tolerance + 1e-12


def check_constraint(target: float, tolerance: float) -> None:
    if not target >= 1:
        raise ConfigError(f"compound grid: target must be >= 1 (alpha, beta, gamma >= 1), got {target}")
    if not tolerance >= 0:
        raise ConfigError(f"compound grid: tolerance must be >= 0, got {tolerance}")


def no_point_error(candidates: Iterable[tuple[float, float, float]], target: float, tolerance: float) -> ConfigError:
    """The one-line error for a grid without a point in the constraint, naming the closest product found."""
    valid = [c for c in candidates if min(c) >= 1]
    if not valid:
        return ConfigError("compound grid: no (alpha, beta, gamma) with every value >= 1 (Eq. 3)")
    best = min(valid, key=lambda c: abs(compound_product(*c) - target))
    return ConfigError(
        f"compound grid: no (alpha, beta, gamma) has alpha*beta^2*gamma^2 within {tolerance:g} of {target:g}; "
        f"closest: {compound_product(*best):.4f} at alpha={best[0]:g}, beta={best[1]:g}, gamma={best[2]:g} "
        f"(widen the grid or sweep.tolerance)"
    )


def check_point(phi: float, alpha: float, beta: float, gamma: float) -> None:
    """A compound-scaling point the builder can take: phi >= 0 and every base >= 1 (one-line ConfigError)."""
    if not phi >= 0:
        raise ConfigError(f"sweep.phi must be >= 0 (the compound coefficient), got {phi}")
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not value >= 1:
            raise ConfigError(f"sweep.{name} must be >= 1 (Eq. 3), got {value}")


def multipliers(phi: float, alpha: float, beta: float, gamma: float) -> dict[str, float]:
    """Sec. 3.3's closed form: depth d = alpha^phi, width w = beta^phi, resolution r = gamma^phi."""
    return {"depth_mult": alpha**phi, "width_mult": beta**phi, "resolution_mult": gamma**phi}


def error_line(error: BaseException) -> str:
    """One line for a failed point: a UserError's own line, else `<type>: <first line>`."""
    if isinstance(error, UserError):
        return error.one_line()
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def write_failure(job_dir: Path, error: BaseException) -> Path:
    """Record a crashed point atomically in `<job_dir>/failed.json`: the error line and the traceback."""
    job_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "status": "failed",
        "error": error_line(error),
        "type": type(error).__name__,
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    }
    path = job_dir / FAILED_FILE
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def read_outcome(job_dir: Path) -> dict[str, Any]:
    """{'status': 'ok', **results} | {'status': 'failed', 'error': ...} | {'status': 'missing'} (never finished)."""
    results, failed = job_dir / "results.json", job_dir / FAILED_FILE
    if results.is_file():
        return {"status": "ok", **json.loads(results.read_text())}
    if failed.is_file():
        record = json.loads(failed.read_text())
        return {"status": "failed", "error": record.get("error", "")}
    return {"status": "missing", "error": "no results.json or failed.json (still running, or killed)"}


def is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
