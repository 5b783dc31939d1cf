"""The verdicts of benchmarks/gpu_check.py against the GPU proof run's targets (issue 23): ResNet-50 synthetic >=
3,500 images/s, FFCV-fed >= 90% of synthetic, the Lightning step >= 95% of the plain loop (the thresholds are
train_throughput.py's), no catalogue family failing under torch.compile (a fallback to eager is a warning), and the
run's top-1 equal to evaluate.py's center top-1. PASS / FAIL, or NOT MEASURED (with why) where a step did not
produce the figure."""

from __future__ import annotations

from typing import Any

from train_throughput import TARGET_FRAMEWORK_RATIO, TARGET_IMAGES_PER_SEC, TARGET_LOADER_FRACTION

COMPILED = ("compiled", "eager_fallback", "failed")  # a family with one of these was checked


def _verdict(value: float | None, target: float, text: str, missing: str) -> dict[str, Any]:
    if value is None:
        return {"verdict": "NOT MEASURED", "value": None, "target": target, "text": missing}
    return {"verdict": "PASS" if value >= target else "FAIL", "value": value, "target": target, "text": text}


def targets(steps: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """The issue's targets from the steps' results; NOT MEASURED (with why) where a step did not produce them."""
    row = steps.get("throughput_ffcv", {}).get("row") or {}
    rates = row.get("images_per_sec", {})
    synthetic, fraction = rates.get("lightning/synthetic"), row.get("loader_fraction")
    ratio = row.get("framework_ratio_synthetic")
    missing = f"throughput_ffcv: {steps.get('throughput_ffcv', {}).get('status', 'not run')}"
    checks = {
        "synthetic_images_per_sec": _verdict(
            synthetic, TARGET_IMAGES_PER_SEC, f"{synthetic or 0:.0f} images/s (>= {TARGET_IMAGES_PER_SEC:.0f})", missing
        ),
        "ffcv_fed_fraction": _verdict(
            fraction, TARGET_LOADER_FRACTION, f"{fraction or 0:.3f} of synthetic (>= {TARGET_LOADER_FRACTION})", missing
        ),
        "lightning_over_plain": _verdict(
            ratio, TARGET_FRAMEWORK_RATIO, f"{ratio or 0:.3f} (>= {TARGET_FRAMEWORK_RATIO})", missing
        ),
    }
    families = steps.get("compile", {}).get("families") or {}
    failed = sorted(f for f, r in families.items() if r["status"] == "failed")
    fallback = sorted(f for f, r in families.items() if r["status"] == "eager_fallback")
    unchecked = sorted(f for f, r in families.items() if r["status"] not in COMPILED)
    verdict = "FAIL" if failed else "NOT MEASURED" if unchecked or not families else "PASS"
    text = f"failed: {', '.join(failed) or 'none'}; eager fallback (warning): {', '.join(fallback) or 'none'}"
    checks["compile_no_family_fails"] = {
        "verdict": verdict,
        "failed": failed,
        "eager_fallback": fallback,
        "unchecked": unchecked,
        "text": text + (f"; not checked: {', '.join(unchecked)}" if unchecked else ""),
    }
    trained = (steps.get("train", {}).get("results") or {}).get("top1")
    evaluated = (steps.get("evaluate", {}).get("center") or {}).get("top1")
    if trained is None or evaluated is None:
        checks["top1_matches_evaluate"] = {"verdict": "NOT MEASURED", "text": "train or evaluate did not finish"}
    else:
        images = steps["evaluate"]["center"]["images"]
        equal = abs(trained - evaluated) < 1e-9
        checks["top1_matches_evaluate"] = {
            "verdict": "PASS" if equal else "FAIL",
            "train_top1": trained,
            "evaluate_top1": evaluated,
            "difference_images": round(abs(trained - evaluated) * images / 100, 2),
            "text": f"train.py {trained:.4f}% vs evaluate.py center {evaluated:.4f}% ({images} images)",
        }
    return checks
