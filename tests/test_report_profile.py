"""scripts/report.py on real tiny runs, and scripts/profile_model.py: activation counting, JSON and plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from scripts import profile_model, report
from tests.helpers import compose_config, copy_run, tiny_overrides
from trainer.evaluate import evaluate
from trainer.models import get_entry
from trainer.models.complexity import meta_model


@pytest.mark.unit
def test_vgg16_forward_activations_follow_the_slides_table() -> None:
    """CS231n's VGG-16 table: input, conv and pool outputs (ReLUs in place, fc6/fc7 as timm's 7x7/1x1 convs)."""
    rows = profile_model.layer_table(meta_model("vgg16"), 224)
    values = profile_model.activation_values(rows, 224)
    assert values == 15_241_704
    by_hand = 224 * 224 * 3 + 224 * 224 * 64 * 2 + 112 * 112 * 64  # input, conv1_1, conv1_2, pool1
    by_hand += 112 * 112 * 128 * 2 + 56 * 56 * 128 + 56 * 56 * 256 * 3 + 28 * 28 * 256
    by_hand += 28 * 28 * 512 * 3 + 14 * 14 * 512 + 14 * 14 * 512 * 3 + 7 * 7 * 512
    by_hand += 4096 + 4096 + 4096 + 1000  # fc6, fc7, timm's global pool of the 1x1 fc7 map, fc8
    assert values == by_hand
    relus = sum(r["values"] for r in rows if r["type"] == "ReLU")
    assert (
        not any(r["counted"] for r in rows if r["type"] == "ReLU") and values + relus == 28_797_416
    )  # ReLUs not in place: 28.8 M


@pytest.mark.unit
@pytest.mark.slow
def test_profile_writes_json_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "profile"
    result = profile_model.main(
        [
            "model=resnet18",
            "resolution=32",
            "--batch-sizes",
            "1,2",
            "--repeats",
            "1",
            "--layers",
            f"out={out}",
            "device=cpu",
        ]
    )
    saved = json.loads((out / "profile.json").read_text())
    assert saved == json.loads(json.dumps(result))
    (row,) = saved["models"]
    assert row["params"] == get_entry("resnet18").params and row["macs"] > 0 and row["activations"] > 0
    assert [p["batch"] for p in row["latency"]] == [1, 2] and row["layers"]
    assert row["training_memory"]["bytes"] > 3 * row["params"] * 4
    for key in ("accuracy_vs_macs", "latency"):
        with Image.open(saved["plots"][key]) as png:
            assert png.format == "PNG" and png.size[0] >= 500 and png.size[1] >= 400


@pytest.mark.integration
@pytest.mark.slow
def test_report_tabulates_two_runs_beside_the_paper(trained_run, cache_dir: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):  # two runs: copies of the session's `trained_run` (2 epochs)
        copy_run(trained_run.run_dir, tmp_path / "runs" / name)
    ckpt = tmp_path / "runs" / "b" / "checkpoints" / "last.ckpt"
    given = [f"ckpt={ckpt}", "eval.protocol=ten_crop"]
    evaluate(compose_config([*tiny_overrides(tmp_path / "eval", cache_dir), *given], "eval"), overrides=given)

    rows = report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    assert [(r["run"][-1], r["protocol"]) for r in rows] == [("a", "center"), ("b", "ten_crop")]
    for row in rows:
        assert row["model"] == "resnet18" and row["epochs"] == 2 and row["params"] == 11_181_642
        # the digits sample set is not the paper's ImageNet: no paper figure to compare with (issue 24)
        assert row["paper_top1"] is None and row["diff_top1"] is None and row["status"] == "done"
        assert row["gmacs"] > 0 and row["train_time_s"] > 0 and row["images_per_sec"] > 0
    table = (tmp_path / "report.md").read_text().splitlines()
    assert len(table) == 4 and "paper_top1" not in table[0]
    with open(tmp_path / "report.csv", newline="") as f:
        assert [r["protocol"] for r in csv.DictReader(f)] == ["center", "ten_crop"]
