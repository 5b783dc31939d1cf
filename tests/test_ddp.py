"""DDP on CPU (gloo, 2 processes as subprocesses of `python train.py` / `python evaluate.py`): exact distributed
validation and evaluation, rank-0-only files, worker-count-independent data, the device and node checks, and resume
falling back past a bad checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from tests.helpers import (
    PYTHON,
    ROOT,
    compose_config,
    copy_run,
    data_overrides,
    ddp_args,
    odd_val_root,
    run_script,
    run_train,
    tiny_overrides,
)
from trainer.builders import build_datamodule
from trainer.data.samplers import SeededDistributedSampler, UnrepeatedDistributedSampler
from trainer.engine.distributed import check_devices, process_rank, rank_zero_hydra_files
from trainer.engine.resume import newest_readable, prune_hpc
from trainer.errors import ConfigError
from trainer.evaluate import evaluate
from trainer.train import train

# -- samplers ---------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_val_shares_cover_the_set_once_where_distributed_sampler_pads() -> None:
    data = list(range(359))
    shares = [list(UnrepeatedDistributedSampler(data, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert [len(s) for s in shares] == [180, 179]
    assert sorted(shares[0] + shares[1]) == data  # every sample once
    padded = [list(DistributedSampler(data, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert len(padded[0] + padded[1]) == 360  # the pitfall: one sample counted twice


@pytest.mark.unit
def test_train_order_and_seeds_depend_on_seed_and_epoch_only() -> None:
    data = list(range(50))
    a = SeededDistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=3)
    b = SeededDistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    assert len({s for _, s in a}) == 25  # a distinct augmentation seed per sample


@pytest.mark.unit
def test_same_batches_whatever_the_worker_count(tiny_cfg) -> None:
    batches = {}
    for workers in (0, 2):
        cfg = tiny_cfg(f"data.num_workers={workers}", "data.persistent_workers=false", "data.batch_size=16")
        datamodule = build_datamodule(cfg)
        torch.manual_seed(0)  # the main process's RNG differs between the runs below: it must not matter
        loader = iter(datamodule.train_dataloader())
        torch.manual_seed(workers)
        batches[workers] = [next(loader) for _ in range(3)]
    for (x0, y0), (x2, y2) in zip(batches[0], batches[2], strict=True):
        assert torch.equal(y0, y2) and torch.equal(x0, x2)


# -- checks before launch ---------------------------------------------------------------------------------------


@pytest.mark.unit
def test_device_and_node_checks(tiny_cfg) -> None:
    with pytest.raises(ConfigError, match=r"trainer.devices=2 but this machine has 0 GPU\(s\)"):
        check_devices(tiny_cfg("trainer.accelerator=gpu", "trainer.devices=2"))
    slurm = {"SLURM_NTASKS": "2", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "trainer"}
    with pytest.raises(ConfigError, match=r"trainer.num_nodes=2 but the SLURM allocation has 1 node"):
        check_devices(tiny_cfg("trainer.num_nodes=2", "trainer.devices=2"), env=slurm)
    with pytest.raises(ConfigError, match=r"trainer.devices=4 but SLURM starts 2 task\(s\) per node"):
        check_devices(tiny_cfg("trainer.devices=4"), env=slurm)
    check_devices(tiny_cfg("trainer.devices=2"), env=slurm)  # consistent: no error
    with pytest.raises(ConfigError, match="sync_batchnorm=true needs GPUs"):
        check_devices(tiny_cfg("trainer.sync_batchnorm=true"))


@pytest.mark.system
def test_ranks_above_zero_write_no_hydra_files() -> None:
    argv = ["train.py", "model=resnet18"]
    rank_zero_hydra_files(argv, env={"SLURM_PROCID": "0"})
    assert argv == ["train.py", "model=resnet18"]
    rank_zero_hydra_files(argv, env={"SLURM_PROCID": "1"})
    assert argv[2:] == ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    assert process_rank({"NODE_RANK": "1", "LOCAL_RANK": "0"}) == 1


@pytest.mark.integration
def test_bad_device_count_and_batch_split_are_one_line_errors(
    cache_dir: Path, sample_root: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """train.py's `__main__` in process (runpy): both are refused before a process is started (test_cli runs the
    entry points' one-line errors through a real interpreter)."""
    base = tiny_overrides(tmp_path / "run", cache_dir)
    monkeypatch.chdir(tmp_path)

    def last_error_line(*overrides: str) -> str:
        code, _, err = run_script("train.py", *base, *overrides, capsys=capsys, monkeypatch=monkeypatch)
        assert code == 2, err
        return err.strip().splitlines()[-1]

    assert last_error_line("trainer.accelerator=gpu", "trainer.devices=2") == (
        "error: trainer.devices=2 but this machine has 0 GPU(s)"
    )
    split = last_error_line("trainer.devices=2", "trainer.strategy=ddp", "data.batch_size=33")
    assert "error: data.batch_size=33 is not divisible by the 2 devices" in split


# -- DDP runs ---------------------------------------------------------------------------------------------------


@pytest.mark.system
@pytest.mark.slow
def test_ddp_val_top1_equals_single_process_evaluation(cache_dir: Path, sample_root: Path, tmp_path: Path) -> None:
    """2 gloo processes on a 359-image val set: the top-1/top-5 DDP reports equals evaluate.py's (one process,
    every image once) on the same checkpoint; only rank 0 wrote files."""
    root = odd_val_root(sample_root, tmp_path / "data")
    run_dir = tmp_path / "run"
    proc = run_train(ddp_args(run_dir, cache_dir, [*data_overrides(root), "data.batch_size=32"]), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "global batch 32 (16 per device x 2 device(s) x 1 node(s))" in proc.stdout + proc.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == 3
    # rank 1 wrote nothing of its own (Lightning's child would write train_ddp_process_1.log)
    files = sorted(p.name for p in run_dir.iterdir() if p.is_file())
    assert files == ["config.yaml", "metrics.csv", "results.json", "train.log"], files
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    overrides = [f"ckpt={ckpt}", *data_overrides(root)]
    cfg = compose_config([*tiny_overrides(tmp_path / "eval", cache_dir), *overrides], "eval")
    single = evaluate(cfg, overrides=overrides)
    assert single["top1"] == pytest.approx(results["top1"], abs=1e-9)
    assert single["top5"] == pytest.approx(results["top5"], abs=1e-9)
    # and the value is over 359 images: a count over 360 (one padded in twice) could not give it
    correct = round(results["top1"] * 359 / 100)
    assert results["top1"] == pytest.approx(100 * correct / 359, abs=1e-4)


@pytest.mark.system
@pytest.mark.slow
def test_evaluation_on_two_processes_equals_one(trained_run, cache_dir: Path, sample_root: Path, tmp_path: Path):
    """`evaluate.py ... trainer.devices=2` on a 359-image val set: each process scores its share, and the results are
    one process's (every image once: the count, the per-class counts), raw and EMA weights alike. Under 10-crop, the
    multi-view protocol: its views travel through the distributed sampler and the summed scores as one image each.
    The sampler and the sums are the same for every protocol (centre crop uses the data module's own pipeline and
    one view); a second two-process run for it would cost 19 s and check no other DDP code."""
    protocol = "ten_crop"
    root = odd_val_root(sample_root, tmp_path / "data")
    ckpt = copy_run(trained_run.run_dir, tmp_path / "run", checkpoints_only=True) / "checkpoints" / "last.ckpt"
    given = [f"ckpt={ckpt}", *data_overrides(root), f"eval.protocol={protocol}", "trainer.enable_progress_bar=false"]
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", f"eval.out={tmp_path}/ddp.json"]
    command = [PYTHON, str(ROOT / "evaluate.py"), *given, *ddp]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "ddp.json").read_text())
    overrides = [*given, f"eval.out={tmp_path}/single.json"]
    one = evaluate(compose_config([*tiny_overrides(tmp_path / "eval", cache_dir), *overrides], "eval"), overrides)
    assert one["images"] == two["images"] == 359
    for key in ("top1", "top5", "top1_ema", "top5_ema", "per_class_top1"):
        assert two[key] == one[key], key
    for key in ("loss", "loss_ema"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    confusion = [(tmp_path / f"{name}_confusion.csv").read_text() for name in ("ddp", "single")]
    assert confusion[0] == confusion[1]


@pytest.mark.integration
@pytest.mark.slow
def test_deterministic_results_whatever_the_worker_count(cache_dir: Path, sample_root: Path, tmp_path: Path):
    """trainer.deterministic=true on CPU; the same seed gives the same weights and metrics with 0 and 2 workers."""
    runs = {}
    for workers in (0, 2):
        cfg = compose_config(
            [
                *tiny_overrides(tmp_path / f"w{workers}", cache_dir),
                f"data.num_workers={workers}",
                "data.persistent_workers=false",
                "trainer.deterministic=true",
                "trainer.limit_train_batches=3",
                "trainer.limit_val_batches=2",
                "model=timm/resnet10t",
            ]
        )
        runs[workers] = train(cfg)
    for key in ("top1", "top5", "val_loss", "global_step"):
        assert runs[0][key] == runs[2][key], key
    weights = [torch.load(r["last_ckpt"], map_location="cpu", weights_only=False)["state_dict"] for r in runs.values()]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# -- resume -----------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_newest_readable_falls_back_and_says_so(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for i, name in enumerate(("step=2.ckpt", "step=4.ckpt", "hpc_ckpt_1.ckpt")):
        torch.save({"state_dict": {}, "global_step": i}, ckpts / name)
        os.utime(ckpts / name, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    (ckpts / "last.ckpt").symlink_to("step=4.ckpt")
    (ckpts / "best.ckpt").write_bytes(b"never a candidate")
    assert newest_readable(ckpts) == (ckpts / "hpc_ckpt_1.ckpt").resolve()
    (ckpts / "hpc_ckpt_1.ckpt").write_bytes(b"truncated")
    os.utime(ckpts / "hpc_ckpt_1.ckpt", ns=(2 * 10**18, 2 * 10**18))
    with pytest.warns(UserWarning, match=r"hpc_ckpt_1.ckpt' is unreadable .*falling back to the previous"):
        assert newest_readable(ckpts).resolve() == (ckpts / "step=4.ckpt").resolve()
    for n in (2, 3):
        torch.save({"state_dict": {}, "global_step": n}, ckpts / f"hpc_ckpt_{n}.ckpt")
    removed = prune_hpc(ckpts, resuming_from=ckpts / "hpc_ckpt_3.ckpt")
    assert [p.name for p in removed] == ["hpc_ckpt_1.ckpt"]


@pytest.mark.integration
@pytest.mark.slow
def test_resume_falls_back_past_an_unreadable_checkpoint(cache_dir: Path, sample_root: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    base = [*tiny_overrides(run_dir, cache_dir), "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    train(compose_config([*base, "trainer.max_epochs=2"]))
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "last.ckpt").resolve().name == "step=4.ckpt" and (ckpts / "step=2.ckpt").is_file()
    (ckpts / "step=4.ckpt").write_bytes((ckpts / "step=4.ckpt").read_bytes()[:1000])  # a torn newest checkpoint
    with pytest.warns(UserWarning, match=r"step=4.ckpt' is unreadable .*falling back to the previous checkpoint"):
        results = train(compose_config([*base, "trainer.max_epochs=3", "resume=auto"]))
    # resumed from step 2 (end of epoch 0): epochs 1 and 2 again, 6 steps in all
    assert results["epochs"] == 3 and results["global_step"] == 6
