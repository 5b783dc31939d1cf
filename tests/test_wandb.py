"""`logger=wandb`: a real offline run on the sample set, read back from wandb's own transaction log, and its resume."""

from __future__ import annotations

import csv
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import compose_config, tiny_overrides
from trainer.engine.wandb_logger import RUN_ID_FILE, has_wandb_credentials
from trainer.train import train

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

_BLOCK, _HEADER = 32768, 7  # the .wandb file is a LevelDB-style log of Record protos, after a 7-byte file header


def read_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """The records of an offline run's `run-<id>.wandb` file (what `wandb sync` uploads)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, chunks = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunks += data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def _history(records: list) -> list[dict]:
    return [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]


def _finished_records(path: Path, timeout: float = 60.0) -> list:
    """The file's records once it holds the run's exit record: wandb's service (a process of its own) may still be
    writing the file when `wandb.finish()` returns (seen on a loaded machine: a file without its run record yet)."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(read_records(path)) if path.is_file() else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _offline_run(run_dir: Path, run_id: str) -> list[tuple[dict, list[dict], list, object]]:
    """(config, history rows, all records, run record) of each offline run of `run_id`, oldest first."""
    dirs = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    runs = []
    for d in dirs:
        records = _finished_records(d / f"run-{run_id}.wandb")
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert run.run_id == run_id
        config = _items(run.config.update)
        runs.append((config, _history(records), records, run))
    return runs


@pytest.fixture
def offline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh machine: no API key, no netrc, nothing written to the home directory."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    wandb.finish()


def _train(run_dir: Path, cache_dir: Path, epochs: int) -> dict:
    cfg = compose_config(
        [
            *tiny_overrides(run_dir, cache_dir),
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "logger=[csv,wandb]",
            "logger.wandb.log_best_checkpoint=true",
            "logger.wandb.tags=[test]",
            f"trainer.max_epochs={epochs}",
            "resume=auto",
        ]
    )
    results = train(cfg)
    wandb.finish()  # what the end of the process does
    return results


@pytest.mark.integration
def test_offline_run_logs_config_metrics_and_resumes_the_same_run(
    offline_env, cache_dir: Path, sample_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    _train(run_dir, cache_dir, epochs=1)
    run_id = (run_dir / "wandb" / RUN_ID_FILE).read_text().strip()
    [(config, history, records, run)] = _offline_run(run_dir, run_id)
    assert run.display_name.startswith("resnet18-norecipe-") and list(run.tags) == ["test"]
    assert config["model"]["name"] == "resnet18" and config["run_dir"] == str(run_dir)
    val = [row for row in history if "val/top1" in row]
    with open(run_dir / "metrics.csv", newline="") as f:  # the CSV logger ran beside it
        csv_val = [row for row in csv.DictReader(f) if row["val/top1"]]
    assert [row["epoch"] for row in val] == [0]
    assert val[0]["val/top1"] == pytest.approx(float(csv_val[0]["val/top1"]))
    assert any(r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model" for r in records)

    _train(run_dir, cache_dir, epochs=2)  # resume=auto in the same directory: the same wandb run id
    runs = _offline_run(run_dir, run_id)
    assert len(runs) == 2, "the resumed run did not continue the same run id"
    resumed = [row for row in runs[1][1] if "val/top1" in row]
    assert [row["epoch"] for row in resumed] == [1]
    assert resumed[0]["trainer/global_step"] > val[0]["trainer/global_step"]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2


@pytest.mark.unit
def test_credentials_decide_online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert not has_wandb_credentials()
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    netrc.chmod(0o600)
    assert has_wandb_credentials()
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert has_wandb_credentials()
