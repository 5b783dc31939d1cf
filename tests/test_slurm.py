"""slurm/train.sbatch and scripts/submit.py on a real one-node SLURM cluster on localhost (the `slurm_cluster`
fixture): a 2-task gloo job whose top-1 equals the single-process evaluation, and a job preempted mid-epoch with
SIGUSR1 that saves, requeues itself, resumes from the saved step and ends with the weights and top-1 of the job
left alone (exact resumption, docs/resume.md)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    PYTHON,
    ROOT,
    compose_config,
    data_overrides,
    ffcv_or_skip,
    odd_val_root,
    run_script,
    tiny_overrides,
)
from trainer.builders import build_datamodule
from trainer.evaluate import evaluate

EPOCHS, BATCHES = 3, 8  # 24 optimizer steps uninterrupted


def _env(run_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHON": PYTHON,
        "PYTHONPATH": str(ROOT / "src"),
        "TRAINER_ROOT": str(ROOT),
        "RUN_DIR": str(run_dir),
    }


def _overrides(data: list[str], cache_dir: Path, run_dir: Path) -> list[str]:
    drop = {"trainer.devices=1"}  # train.sbatch sets trainer.devices from --ntasks-per-node
    return [
        *(o for o in tiny_overrides(run_dir, cache_dir) if o not in drop and not o.startswith("run_dir=")),
        *data,
        f"trainer.max_epochs={EPOCHS}",
        f"trainer.limit_train_batches={BATCHES}",
        "data.batch_size=32",
        "model=timm/resnet10t",
    ]


def _job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _wait(job_id: str, until: set[str], timeout: float = 170) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = _job(job_id)
        if job["JobState"] in until:
            return job
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], check=False)
    raise AssertionError(f"job {job_id} still {job['JobState']} after {timeout} s")


def _sbatch(tmp_path: Path, run_dir: Path, overrides: list[str]) -> str:
    cmd = ["sbatch", "--parsable", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=10"]
    cmd += [f"--output={tmp_path}/slurm-%j.out", str(ROOT / "slurm" / "train.sbatch"), *overrides]
    return subprocess.run(
        cmd, capture_output=True, text=True, check=True, env=_env(run_dir), cwd=tmp_path
    ).stdout.strip()


def _data(loader: str, sample_root: Path, cache_dir: Path, tmp_path: Path) -> list[str]:
    """The job's data overrides: the folder loader on the sample set with an odd val count (the split of an uneven
    val set is under test), or the sample set through FFCV, its .beton files written here first so that the job's
    two tasks only read them."""
    if loader == "folder":
        return data_overrides(odd_val_root(sample_root, tmp_path / "data"))
    ffcv_or_skip()
    data = ["data=sample_ffcv", "data.num_workers=0"]
    build_datamodule(compose_config([*tiny_overrides(tmp_path / "prepare", cache_dir), *data])).prepare_data()
    return data


@pytest.fixture(scope="module")
def uninterrupted_job(slurm_cluster: str, cache_dir: Path, sample_root: Path, tmp_path_factory):
    """The 2-task job left alone, once per loader: the reference of the preempted job (docs/resume.md's guarantee)."""
    made: dict[str, dict] = {}

    def get(loader: str) -> dict:
        if loader not in made:
            tmp_path = tmp_path_factory.mktemp(f"uninterrupted-{loader}")
            data = _data(loader, sample_root, cache_dir, tmp_path)
            run_dir = tmp_path / "run"
            job_id = _sbatch(tmp_path, run_dir, _overrides(data, cache_dir, run_dir))
            job = _wait(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
            log = (tmp_path / f"slurm-{job_id}.out").read_text()
            made[loader] = {"job": job, "log": log, "data": data, "run_dir": run_dir}
        return made[loader]

    return get


def _first_difference(a: dict, b: dict) -> str | None:
    for key in a:
        if key not in b or not torch.equal(a[key], b[key]):
            return key
    return None


@pytest.mark.system
@pytest.mark.slow
def test_two_task_job_matches_single_process_evaluation(
    uninterrupted_job: dict, cache_dir: Path, tmp_path: Path
) -> None:
    job, log, data, run_dir = (uninterrupted_job("folder")[k] for k in ("job", "log", "data", "run_dir"))
    assert job["JobState"] == "COMPLETED", log[-3000:]
    assert "Starting with 2 processes" in log and "16 per device x 2 device(s) x 1 node(s)" in log
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == EPOCHS * BATCHES
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    overrides = [f"ckpt={ckpt}", *data]
    single = evaluate(compose_config([*tiny_overrides(tmp_path / "eval", cache_dir), *overrides], "eval"), overrides)
    assert single["top1"] == pytest.approx(results["top1"], abs=1e-9)


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.parametrize("loader", ["folder", "ffcv"])
def test_preempted_job_requeues_resumes_and_finishes(
    loader: str, uninterrupted_job, cache_dir: Path, tmp_path: Path
) -> None:
    reference = uninterrupted_job(loader)
    data = reference["data"]
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [
            *(PYTHON, str(ROOT / "scripts" / "submit.py"), "--tasks-per-node=2", "--cpus-per-task=1", "--time=10"),
            *(f"--output={tmp_path}/slurm-%j.out", *_overrides(data, cache_dir, run_dir)),
        ],
        capture_output=True,
        text=True,
        env=_env(run_dir),
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    job_id = re.match(r"job (\d+):", out.stdout).group(1)
    metrics = run_dir / "metrics.csv"
    ckpts = run_dir / "checkpoints"
    # preempt mid-run: once the first epoch's checkpoint exists (step 8), during the second epoch
    deadline = time.time() + 150
    while time.time() < deadline and not (ckpts / "step=8.ckpt").exists():
        time.sleep(0.2)
    assert (ckpts / "step=8.ckpt").exists(), (tmp_path / f"slurm-{job_id}.out").read_text()[-3000:]
    time.sleep(1.0)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    # SLURM holds a requeued job for its credential lifetime (~2 min, Reason=BeginTime): release it at once
    deadline = time.time() + 90
    while time.time() < deadline and not (_job(job_id)["JobState"] == "PENDING" and _job(job_id)["Restarts"] == "1"):
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    job = _wait(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=170)
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert job["JobState"] == "COMPLETED", log[-3000:]
    assert int(job["Restarts"]) == 1, "the job did not requeue itself"
    assert "Handling auto-requeue signal" in log and f"job {job_id} (restart 1)" in log
    hpc = ckpts / "hpc_ckpt_1.ckpt"
    saved_step = torch.load(hpc, map_location="cpu", weights_only=False)["global_step"]
    assert BATCHES <= saved_step < EPOCHS * BATCHES  # saved in the middle of the run, not at 0
    assert f"resuming from {hpc}" in log.split(f"job {job_id} (restart 1)")[1]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == EPOCHS * BATCHES  # as the uninterrupted run
    assert results["epochs"] == EPOCHS
    assert metrics.is_file()
    # exact resumption: the weights and the figures of the job left alone (SLURM's signal is handled at a step's end)
    if saved_step % BATCHES:  # saved in the middle of an epoch: the resume skips what was trained of it
        assert f"resuming at epoch {saved_step // BATCHES}, step {saved_step}:" in log
    reference = reference["run_dir"]
    want = torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    got = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert _first_difference(got["state_dict"], want["state_dict"]) is None, "the weights differ"
    expected = json.loads((reference / "results.json").read_text())
    assert (results["top1"], results["val_loss"]) == (expected["top1"], expected["val_loss"])


@pytest.mark.system
@pytest.mark.slow
def test_num_nodes_against_the_allocation_is_one_line(
    slurm_cluster: str, cache_dir: Path, sample_root: Path, tmp_path: Path
) -> None:
    cmd = ["srun", "--nodes=1", "--ntasks-per-node=1", "--job-name=trainer", PYTHON, str(ROOT / "train.py")]
    cmd += [*tiny_overrides(tmp_path / "run", cache_dir), "trainer.num_nodes=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=150)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()  # srun adds its own "task 0: Exited with exit code 2"
    assert (
        "error: trainer.num_nodes=2 but the SLURM allocation has 1 node(s) (sbatch --nodes=1); set trainer.num_nodes=1"
        in lines
    )


@pytest.mark.integration
def test_submit_makes_one_job_per_sweep_point_and_checks_overrides(capsys, monkeypatch) -> None:
    """scripts/submit.py's `__main__` in process (runpy): the preemption test runs it through a real interpreter."""
    submit = ["scripts/submit.py", "--dry-run", "--gpus-per-node=8", "--partition=gpu"]

    def run(*overrides: str) -> tuple[int, str, str]:
        return run_script(*submit, *overrides, capsys=capsys, monkeypatch=monkeypatch)

    code, out, err = run("optim.lr=0.1,0.2", "model=resnet18,resnet34")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 4 and all("--ntasks-per-node=8 --gpus-per-node=8 --partition=gpu" in line for line in lines)
    assert {line.split("train.sbatch ")[1] for line in lines} == {
        f"optim.lr={lr} model={m}" for lr in ("0.1", "0.2") for m in ("resnet18", "resnet34")
    }
    code, _, err = run("optim.lrr=0.1")
    assert code == 2 and err.startswith("error: unknown config key 'optim.lrr'")
