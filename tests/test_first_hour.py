"""What a new user hits in the first hour (issue 24): a reused run directory, a finished run resumed, AutoAugment
with the installed Pillow, auxiliary heads and the smallest input, evaluation views, progress and noise."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from tests.helpers import compose_config, run_train, tiny_overrides
from trainer.errors import ConfigError
from trainer.train import best_top1, train


def _cfg(run_dir: Path, cache_dir: Path, *overrides: str) -> DictConfig:
    return compose_config(
        [*tiny_overrides(run_dir, cache_dir), "model=timm/resnet10t", "trainer.limit_train_batches=2", *overrides]
    )


def _digests(run_dir: Path) -> dict[str, str]:
    """sha256 of every file under `run_dir` (links as their target's bytes)."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, sample_root: Path) -> Path:
    """A finished one-epoch run (timm/resnet10t, two batches)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(_cfg(run_dir, cache_dir))
    return run_dir


# 1. A run directory holding a run is refused without resume=auto, before anything is written.
@pytest.mark.integration
def test_reusing_a_run_dir_is_refused_before_writing(finished: Path, cache_dir: Path) -> None:
    before = _digests(finished)
    with pytest.raises(ConfigError) as error:
        train(_cfg(finished, cache_dir))
    message = str(error.value)
    assert "\n" not in message and "resume=auto" in message and "run_dir" in message and str(finished) in message
    assert _digests(finished) == before


@pytest.mark.system
@pytest.mark.slow
def test_reusing_a_run_dir_on_the_command_line_leaves_hydra_files_alone(finished: Path, cache_dir: Path) -> None:
    before = _digests(finished)
    done = run_train(tiny_overrides(finished, cache_dir), cwd=finished.parent)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: run_dir") and "resume=auto" in done.stderr
    assert _digests(finished) == before  # .hydra/ included: refused before Hydra writes


# 2. resume=auto on a finished run says it is complete and changes nothing.
@pytest.mark.integration
def test_resuming_a_finished_run_changes_nothing(
    finished: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = _digests(finished)
    saved = json.loads((finished / "results.json").read_text())
    results = train(_cfg(finished, cache_dir, "resume=auto"))
    assert results == saved
    assert _digests(finished) == before  # results.json and metrics.csv byte for byte
    assert results["top1"] == results["top1"]  # not NaN
    said = caplog.text
    assert "already complete" in said and "1 epochs done" in said and f"{saved['top1']:.2f}%" in said


@pytest.mark.unit
def test_best_top1_of_zero_is_zero_not_null() -> None:
    checkpoint = ModelCheckpoint(monitor="val/top1", mode="max")
    assert best_top1(checkpoint) is None  # nothing validated yet
    checkpoint.best_model_score = torch.tensor(0.0)
    assert best_top1(checkpoint) == 0.0
    checkpoint.best_model_score = torch.tensor(0.25)
    assert best_top1(checkpoint) == pytest.approx(25.0)
