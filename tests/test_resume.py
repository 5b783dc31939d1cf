"""Exact resumption (issue 21): a run interrupted in the middle of an epoch and resumed with resume=auto ends with
exactly the weights, optimizer state, EMA weights, results.json figures and per-epoch metrics of the same run left
alone; with the folder and the FFCV loaders, after Ctrl-C (SIGINT) and after kill -9 following a step checkpoint,
with ema.decay and sched=plateau, on the CPU with trainer.deterministic=true. Also: a NaN loss stops the run naming
the step, a full disk during a checkpoint write keeps the previous last.ckpt, and the run-directory lock."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.helpers import PYTHON, ROOT, compose_config, ffcv_or_skip, logged, metrics_rows, tiny_overrides
from trainer.errors import CheckpointError, NonFiniteLossError, RunDirLockedError
from trainer.train import train

EPOCHS, BATCHES = 2, 4  # 8 optimizer steps; interruptions at step 6, in the middle of the second epoch
STOP_AT = 6


class SignalAt(L.Callback):
    """Sends `signum` to this process at the end of optimizer step `step` (a user's Ctrl-C, a kill -9)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = int(step), int(signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class NaNAt(L.Callback):
    """Makes the model's output NaN from optimizer step `step` + 1 on (a diverging run)."""

    def __init__(self, step: int) -> None:
        self.step = int(step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))


def _overrides(run_dir: Path, cache_dir: Path, data: str, *extra: str) -> list[str]:
    return [
        *tiny_overrides(run_dir, cache_dir),
        f"data={data}",
        "data.num_workers=0",
        "data.batch_size=32",
        "model=timm/resnet10t",
        f"trainer.max_epochs={EPOCHS}",
        f"trainer.limit_train_batches={BATCHES}",
        "trainer.limit_val_batches=2",
        "trainer.deterministic=true",
        "ema.decay=0.9",
        "sched=plateau",
        "checkpoint.every_n_steps=2",
        "logger=csv",
        *extra,
    ]


def _signal_at(step: int, signum: int) -> list[str]:
    target = f"{__name__}.SignalAt"
    return [
        f"+callbacks.signal_at._target_={target}",
        f"+callbacks.signal_at.step={step}",
        f"+callbacks.signal_at.signum={signum}",
    ]


def _final(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def _assert_same_tensors(a, b, where: str) -> None:
    """Every tensor equal (torch.equal), in nested dicts/lists; fails naming the first differing key."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys differ: {sorted(set(a) ^ set(b), key=str)[:5]}"
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def _epoch_rows(run_dir: Path) -> list[dict]:
    """metrics.csv's per-epoch values (rows with val/top1 or train/loss_epoch; timings left out)."""
    rows = metrics_rows(run_dir)
    keep = [k for k in rows[0] if "per_sec" not in k and k != "train/loss_step"]
    return [{k: r[k] for k in keep} for r in rows if r.get("val/top1") or r.get("train/loss_epoch")]


def _assert_same_run(run: Path, ref: Path) -> None:
    got, want = _final(run), _final(ref)
    assert got["global_step"] == want["global_step"] == EPOCHS * BATCHES
    _assert_same_tensors(got["state_dict"], want["state_dict"], "state_dict")  # the EMA weights: ema.module.*
    _assert_same_tensors(got["optimizer_states"], want["optimizer_states"], "optimizer_states")
    results, expected = (json.loads((d / "results.json").read_text()) for d in (run, ref))
    for key in ("top1", "top5", "val_loss", "top1_ema", "top5_ema", "epochs", "global_step"):
        assert results[key] == expected[key], key
    assert _epoch_rows(run) == _epoch_rows(ref)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, sample_root: Path):
    """One uninterrupted run per loader, made once and shared by the tests."""
    made: dict[str, Path] = {}

    def get(data: str) -> Path:
        if data not in made:
            run_dir = tmp_path_factory.mktemp(f"reference-{data}")
            train(compose_config(_overrides(run_dir, cache_dir, data)))
            made[data] = run_dir
        return made[data]

    return get


def _interrupt_in_process(run_dir: Path, cache_dir: Path, data: str) -> None:
    """Ctrl-C at step STOP_AT: the run saves at the end of that step and exits with status 1."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as stopped:
            train(compose_config(_overrides(run_dir, cache_dir, data, *_signal_at(STOP_AT, signal.SIGINT))))
        assert stopped.value.code == 1
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores SIGINT after a KeyboardInterrupt


def _resume(run_dir: Path, cache_dir: Path, data: str, capsys) -> str:
    capsys.readouterr()
    train(compose_config(_overrides(run_dir, cache_dir, data, "resume=auto")))
    return capsys.readouterr().out + capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("data", ["sample", "sample_ffcv"])
@pytest.mark.xdist_group("resume_reference")  # one worker for the tests sharing `reference`: each run made once
def test_ctrl_c_then_resume_equals_uninterrupted(data, reference, cache_dir, tmp_path, capsys, caplog) -> None:
    if data == "sample_ffcv":
        ffcv_or_skip()
    ref = reference(data)
    run_dir = tmp_path / "run"
    _interrupt_in_process(run_dir, cache_dir, data)
    saved = _final(run_dir)
    assert saved["global_step"] == STOP_AT  # saved at the step Ctrl-C came in, not at the epoch's end
    with caplog.at_level("INFO"):
        _resume(run_dir, cache_dir, data, capsys)
    skipped = STOP_AT - BATCHES
    assert f"resuming at epoch 1, step {STOP_AT}: the first {skipped} batch(es) of epoch 1" in caplog.text
    _assert_same_run(run_dir, ref)
    # the epoch resumed in its middle has a rate of its own part (Lightning skips on_train_epoch_start there; the
    # clock once ran from 0 and logged 0.005 images/s); a factor 20 leaves room for a noisy machine's timing
    rates, reference_rates = logged(run_dir, "train/images_per_sec"), logged(ref, "train/images_per_sec")
    assert len(rates) == len(reference_rates) == EPOCHS
    assert min(rates) > min(reference_rates) / 20, (rates, reference_rates)


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.parametrize("data", ["sample", "sample_ffcv"])
@pytest.mark.xdist_group("resume_reference")
def test_kill_9_after_a_step_checkpoint_then_resume_equals_uninterrupted(
    data, reference, cache_dir, tmp_path, capsys
) -> None:
    if data == "sample_ffcv":
        ffcv_or_skip()
    ref = reference(data)  # for FFCV this also writes the .beton files into the cache the killed run reads
    run_dir = tmp_path / "run"
    args = [*_overrides(run_dir, cache_dir, data, *_signal_at(STOP_AT + 1, signal.SIGKILL))]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    out = subprocess.run(
        [PYTHON, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    # the step checkpoint of step 6 (every 2 steps) is what survives; step 7 is lost and done again
    assert _final(run_dir)["global_step"] == STOP_AT
    assert (run_dir / ".lock").exists()  # left by the killed run: stale, taken over by the resumed one
    _resume(run_dir, cache_dir, data, capsys)
    _assert_same_run(run_dir, ref)


@pytest.mark.integration
@pytest.mark.parametrize(("log_every", "stopped_after"), [(1, 2), (50, 3)])
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    cache_dir, tmp_path, log_every: int, stopped_after: int
) -> None:
    """The bad step (3) is named either way. When every step logs, the run stops before that step's update (after
    2 steps); else at the next check (here the epoch's last batch, after 3), and no checkpoint follows the bad step."""
    run_dir = tmp_path / "run"
    extra = [
        f"+callbacks.nan._target_={__name__}.NaNAt",
        "+callbacks.nan.step=2",
        "trainer.max_epochs=1",
        f"trainer.log_every_n_steps={log_every}",
    ]
    expected = rf"loss is nan at step 3 \(epoch 0, batch 3\), lr [0-9.e-]+: stopped after {stopped_after} steps "
    with pytest.raises(NonFiniteLossError, match=expected):
        train(compose_config(_overrides(run_dir, cache_dir, "sample", *extra)))
    last = _final(run_dir)
    assert last["global_step"] == 2  # the step checkpoint before the bad step
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())


@pytest.mark.integration
def test_nan_loss_skip_counts_and_stops_after_ten_in_a_row(cache_dir, tmp_path) -> None:
    run_dir = tmp_path / "run"
    extra = [
        f"+callbacks.nan._target_={__name__}.NaNAt",
        "+callbacks.nan.step=1",
        "loss.nonfinite=skip",
        "trainer.max_epochs=3",
    ]
    with pytest.raises(NonFiniteLossError, match=r"non-finite for 10 steps in a row, the last at step 11"):
        train(compose_config(_overrides(run_dir, cache_dir, "sample", *extra)))


@pytest.mark.integration
def test_disk_full_during_a_checkpoint_keeps_the_previous_last_ckpt(cache_dir, tmp_path, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if isinstance(obj, dict) and obj.get("global_step") == 4:  # the second step checkpoint
            real_save(obj, f, *args, **kwargs)  # part of the bytes are written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)  # as the atomic writer calls it (trainer/io.py)
    with pytest.raises(CheckpointError, match="no space left on the device while writing checkpoint .*step=4.ckpt"):
        train(compose_config(_overrides(run_dir, cache_dir, "sample", "trainer.max_epochs=1")))
    monkeypatch.setattr(torch, "save", real_save)
    assert _final(run_dir)["global_step"] == 2  # the previous one, intact
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # no partial file left


@pytest.mark.unit
def test_run_dir_lock_refuses_a_live_run_takes_over_a_stale_one_and_a_requeued_job(tmp_path, monkeypatch) -> None:
    from trainer.engine.run_lock import RunLock

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    lock = tmp_path / ".lock"
    live = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"host": os.uname().nodename, "pid": live.pid, "slurm_job": None}))
        with pytest.raises(RunDirLockedError, match=f"in use by a live run \\(process {live.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        live.kill()
        live.wait()
    with pytest.warns(UserWarning, match=f"stale lock of process {live.pid}"):  # the process is gone now
        RunLock(tmp_path).acquire()
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    # the requeued job of the same SLURM run, on another node: taken over
    lock.write_text(json.dumps({"host": "other-node", "pid": 1, "slurm_job": "4242"}))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with pytest.warns(UserWarning, match="SLURM job 4242 \\(requeued\\)"):
        RunLock(tmp_path).acquire()
    # another job's live-looking lock on another host: refused
    lock.write_text(json.dumps({"host": "other-node", "pid": 1, "slurm_job": "7"}))
    with pytest.raises(RunDirLockedError, match="SLURM job 7"):
        RunLock(tmp_path).acquire()
