"""Real training runs on the bundled sample set: outputs, resume, evaluation, kills and bad images."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import DictConfig, OmegaConf

from tests.helpers import PYTHON, ROOT, compose_config, copy_run, tiny_overrides
from trainer.cli import EXIT_USER_ERROR, user_errors
from trainer.errors import CheckpointError, DataError
from trainer.evaluate import evaluate
from trainer.io import _umask
from trainer.models import get_entry
from trainer.train import train

BATCHES = 4  # training batches per epoch in the short runs


def _cfg(run_dir: Path, cache_dir: Path, *overrides: str, config_name: str = "train") -> DictConfig:
    return compose_config(
        [*tiny_overrides(run_dir, cache_dir), f"trainer.limit_train_batches={BATCHES}", *overrides], config_name
    )


def _metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.integration
def test_run_writes_its_outputs(trained_run) -> None:
    """The session's `trained_run` (tests/conftest.py): 2 epochs of BATCHES batches."""
    run_dir, results, _ = trained_run
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved == pytest.approx(results)
    for key in ("top1", "top5", "epochs", "params", "wall_time_s", "images_per_sec"):
        assert saved[key] is not None, key
    assert saved["epochs"] == 2 and saved["global_step"] == 2 * BATCHES
    assert saved["params"] == 11_181_642  # ResNet-18 with a 10-class head
    assert 0 <= saved["top1"] <= saved["top5"] <= 100
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert "name: resnet18" in (run_dir / "config.yaml").read_text()
    rows = _metric_rows(run_dir)
    assert {r["epoch"] for r in rows if r["val/top1"]} == {"0", "1"}
    assert float([r for r in rows if r["val/top1"]][-1]["val/top1"]) * 100 == pytest.approx(saved["top1"])


@pytest.mark.integration
def test_printed_saved_and_checkpointed_configs_are_one(trained_run) -> None:
    """The config is resolved once, before anything is built: `print_config=true` prints what config.yaml and every
    checkpoint then hold, with the model's data defaults and the device's switches filled in."""
    saved = (trained_run.run_dir / "config.yaml").read_text()
    assert trained_run.printed_config.startswith(saved), "printed config != config.yaml"
    config = OmegaConf.load(trained_run.run_dir / "config.yaml")
    assert config.run_dir == str(trained_run.run_dir) and config.paths.cache_dir  # interpolations resolved
    entry = get_entry(config.model.name)  # null in data=sample: the model's crop ratio and timm's normalisation
    assert (config.data.crop_ratio, config.data.interpolation) == (entry.crop_ratio, entry.interpolation)
    assert config.data.mean == list(timm.data.IMAGENET_DEFAULT_MEAN) and config.data.std is not None
    assert config.compile is False and config.model.channels_last is False  # null: decided by the device (CPU)
    for name in ("last.ckpt", "best.ckpt"):
        checkpoint = torch.load(trained_run.run_dir / "checkpoints" / name, map_location="cpu", weights_only=False)
        assert OmegaConf.to_yaml(OmegaConf.create(checkpoint["trainer_config"])) == saved, name


@pytest.mark.integration
def test_evaluate_reproduces_the_last_val_top1(trained_run, cache_dir: Path, tmp_path: Path) -> None:
    results = trained_run.results
    run_dir = copy_run(trained_run.run_dir, tmp_path / "run", checkpoints_only=True)  # evaluate writes beside it
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cfg = _cfg(tmp_path / "eval", cache_dir, f"ckpt={ckpt}", config_name="eval")
    evaluated = evaluate(cfg, overrides=[f"ckpt={ckpt}"])
    assert evaluated["top1"] == results["top1"]  # exactly: same weights, data, transforms and batches
    assert evaluated["top5"] == results["top5"]
    assert json.loads((run_dir / "eval_center.json").read_text())["top1"] == results["top1"]


@pytest.mark.integration
def test_evaluate_rejects_a_mismatched_model_or_data(
    trained_run, cache_dir: Path, sample_root: Path, tmp_path: Path
) -> None:
    ckpt = trained_run.ckpt
    cfg = _cfg(tmp_path / "eval", cache_dir, f"ckpt={ckpt}", "model=resnet34", config_name="eval")
    with pytest.raises(CheckpointError, match="holds a resnet18 that does not fit model resnet34"):
        evaluate(cfg, overrides=[f"ckpt={ckpt}", "model=resnet34"])
    # data with other classes: three of the ten digits
    root = tmp_path / "three"
    for split in ("train", "val"):
        for digit in "012":
            shutil.copytree(cache_dir / "sample_digits_32" / split / digit, root / split / digit)
    overrides = [f"ckpt={ckpt}", f"data.root={root}", "data.num_classes=null", "data.sample=false"]
    cfg = _cfg(tmp_path / "eval", cache_dir, *overrides, config_name="eval")
    with pytest.raises(CheckpointError, match=r"has 10 classes but data .* has 3"):
        evaluate(cfg, overrides=overrides)


@pytest.mark.integration
@pytest.mark.slow
def test_resume_continues_at_the_right_epoch_and_step(trained_run, cache_dir: Path, tmp_path: Path) -> None:
    run_dir = copy_run(trained_run.run_dir, tmp_path / "resumed")
    first = json.loads((run_dir / "results.json").read_text())
    # resumed with the run's own settings: the session's trained_run has EMA weights (ema.decay=0.9)
    results = train(_cfg(run_dir, cache_dir, "trainer.max_epochs=3", "resume=auto", "ema.decay=0.9"))
    assert results["epochs"] == 3 and results["global_step"] == 3 * BATCHES
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 3 * BATCHES
    rows = _metric_rows(run_dir)
    val_epochs = [r["epoch"] for r in rows if r["val/top1"]]
    assert val_epochs == ["0", "1", "2"]  # the history is kept, nothing logged twice
    assert first["epochs"] == 2


@pytest.mark.integration
@pytest.mark.slow
def test_last_ckpt_is_rewritten_every_epoch(cache_dir: Path, sample_root: Path, tmp_path: Path) -> None:
    # with lr 0 val top-1 never improves after epoch 0, so best.ckpt stays at epoch 0 while last.ckpt moves on
    train(_cfg(tmp_path, cache_dir, "trainer.max_epochs=2", "optim.lr=0", "trainer.limit_train_batches=1"))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (1, 2)
    assert best["epoch"] == 0
    assert oct((tmp_path / "checkpoints" / "last.ckpt").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


@pytest.mark.integration
@pytest.mark.slow
def test_ckpt_path_resumes_into_a_new_run_dir(trained_run, cache_dir: Path, tmp_path: Path) -> None:
    ckpt = trained_run.ckpt
    # without the run's ema.decay: one line naming it, not a state_dict key error
    with pytest.raises(CheckpointError, match=r"holds EMA weights but ema.decay is not set: .* ema.decay=0.9$"):
        train(_cfg(tmp_path / "no_ema", cache_dir, "trainer.max_epochs=3", f"ckpt_path={ckpt}"))
    results = train(_cfg(tmp_path / "new", cache_dir, "trainer.max_epochs=3", f"ckpt_path={ckpt}", "ema.decay=0.9"))
    assert results["epochs"] == 3 and results["global_step"] == 3 * BATCHES


@pytest.mark.integration
@pytest.mark.slow
def test_undecodable_image_is_named_or_skipped(cache_dir: Path, sample_root: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "digits"  # a small copy: 2 classes x 24 images per split
    for split in ("train", "val"):
        for digit in "37":
            (root / split / digit).mkdir(parents=True)
            for image in sorted((sample_root / split / digit).iterdir())[:24]:
                shutil.copy(image, root / split / digit)
    bad = sorted((root / "train" / "3").iterdir())[0]
    bad.write_bytes(b"not a jpeg")
    data = [
        f"data.root={root}",
        "data.sample=false",
        "data.num_classes=2",
        "trainer.limit_train_batches=null",
        "data.batch_size=16",
        "callbacks=none",
    ]
    with pytest.raises(SystemExit) as exit_info, user_errors():
        train(_cfg(tmp_path / "run1", cache_dir, *data))
    assert exit_info.value.code == EXIT_USER_ERROR
    assert f"cannot decode image '{bad}'" in capsys.readouterr().err
    with pytest.warns(UserWarning, match=r"skipped 1 undecodable image\(s\) in epoch 0"):
        results = train(_cfg(tmp_path / "run2", cache_dir, *data, "data.skip_bad_images=true"))
    assert results["epochs"] == 1
    with pytest.raises(DataError):  # the same through DataLoader workers, re-raised in the main process
        train(_cfg(tmp_path / "run3", cache_dir, *data, "data.num_workers=1", "data.persistent_workers=false"))


@pytest.mark.system
@pytest.mark.slow
def test_kill_during_training_then_resume(cache_dir: Path, sample_root: Path, tmp_path: Path) -> None:
    """SIGKILL a real `python train.py` right after it has rewritten last.ckpt (while it may be writing the next),
    then check the checkpoint is whole and `resume=auto` continues from it."""
    run_dir = tmp_path / "run"
    args = [
        PYTHON,
        str(ROOT / "train.py"),
        *tiny_overrides(run_dir, cache_dir),
        "trainer.max_epochs=50",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
    ]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        deadline, seen = time.time() + 180, set()
        while time.time() < deadline and len(seen) < 3 and proc.poll() is None:
            if last.exists():
                seen.add(last.stat().st_mtime_ns)
            time.sleep(0.01)
        assert len(seen) >= 3, "training never wrote last.ckpt three times"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    results = train(
        _cfg(
            run_dir,
            cache_dir,
            f"trainer.max_epochs={epoch + 2}",
            "resume=auto",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
        )
    )
    assert results["epochs"] == epoch + 2
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".")], "temporary files left behind"


# what Lightning, Hydra and the libraries print that a user cannot act on from the project's files (each was seen)
NOISE = ("litlogger", "`srun` command is available", "LeafSpec", "log_every_n_steps", "exists and is not empty")


@pytest.mark.system
@pytest.mark.slow
def test_main_job_reaches_90_percent_and_it_and_its_resume_print_nothing_the_user_cannot_act_on(
    cache_dir: Path, sample_root: Path, tmp_path: Path
) -> None:
    """`python train.py` with no arguments (only where it writes redirected): >= 90% val top-1 on the sample set, and
    neither it nor its resume into the same run directory (`resume=auto`, one epoch more, two batches of it) prints
    a warning or a library's hint the user cannot act on (on a machine with SLURM's client too: CI installs it)."""
    run_dir = tmp_path / "run"
    given = [f"run_dir={run_dir}", f"paths.cache_dir={cache_dir}"]
    start = time.time()
    run = {"capture_output": True, "text": True, "cwd": tmp_path, "timeout": 1200}  # ~1 min alone on 2 cores
    first = subprocess.run([PYTHON, str(ROOT / "train.py"), *given], **run)
    elapsed = time.time() - start
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["top1"] >= 90.0, results
    assert f"val top-1 {results['top1']:.2f}%" in first.stdout and f"run directory: {run_dir}" in first.stdout
    assert f"data {sample_root}" in first.stderr  # the summary names the image folder
    print(f"main job: {results['top1']:.2f}% top-1 in {elapsed:.0f} s")
    epochs = results["epochs"]
    more = ["resume=auto", f"trainer.max_epochs={epochs + 1}", "trainer.limit_train_batches=2"]
    resumed = subprocess.run([PYTHON, str(ROOT / "train.py"), *given, *more], **run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"after {epochs + 1} epochs" in (run_dir / "train.log").read_text()
    for done in (first, resumed):
        said = done.stdout + done.stderr
        assert not [n for n in NOISE if n in said], said
        assert "Warning" not in said, said


@pytest.mark.integration
def test_ema_is_validated_checkpointed_and_evaluated(trained_run, cache_dir: Path, tmp_path: Path) -> None:
    """ema.decay (the session's `trained_run` has 0.9): val_ema/top1 beside val/top1, the averaged weights in the
    checkpoint, evaluate.py reports both, and init_from takes the raw weights."""
    from trainer.models import create_model, load_weights

    results = trained_run.results
    assert 0 <= results["top1_ema"] <= results["top5_ema"] <= 100
    ckpt = copy_run(trained_run.run_dir, tmp_path / "run", checkpoints_only=True) / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert not torch.equal(state["ema.module.fc.weight"], state["model.fc.weight"])
    evaluated = evaluate(_cfg(tmp_path / "eval", cache_dir, f"ckpt={ckpt}", config_name="eval"), overrides=[])
    assert (evaluated["top1"], evaluated["top1_ema"]) == (results["top1"], results["top1_ema"])
    report = load_weights(create_model("resnet18", num_classes=10), ckpt)
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])


@pytest.mark.integration
@pytest.mark.slow
def test_plateau_schedule_steps_on_validation_top1(cache_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    results = train(_cfg(run_dir, cache_dir, "trainer.max_epochs=2", "sched=plateau", "sched.patience_epochs=0"))
    assert results["epochs"] == 2
    assert any(r.get("lr-SGD/pg1") for r in _metric_rows(run_dir)), "the lr is logged"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    plateau = checkpoint["lr_schedulers"][0]["plateau"]  # the whole ReduceLROnPlateau state, for resuming
    assert plateau["best"] == pytest.approx(max(float(r["val/top1"]) for r in _metric_rows(run_dir) if r["val/top1"]))
    assert plateau["last_epoch"] == 2  # stepped on epoch 2's result before epoch 2's checkpoint
