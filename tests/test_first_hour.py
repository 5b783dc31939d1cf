"""What a new user hits in the first hour (issue 24): a reused run directory, a finished run resumed, AutoAugment
with the installed Pillow, auxiliary heads and the smallest input, evaluation views, progress and noise."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from tests.helpers import ROOT, compose_config, run_train, tiny_overrides
from trainer.builders import build_model, build_module, check_aux_heads, smallest_training_resolution
from trainer.data.batch_augment import BatchAugment
from trainer.data.ffcv import WriteResult
from trainer.data.transforms import POLICIES, build_train_transform, posterize
from trainer.engine.callbacks import EpochLength, percent
from trainer.errors import ConfigError
from trainer.eval import Protocol, score_scales, ten_crop
from trainer.evaluate import trained_with_flips
from trainer.hub import export
from trainer.models import get_entry, list_models
from trainer.models.__main__ import cached_macs
from trainer.models.__main__ import main as models_main
from trainer.models.catalogue import accepted_kwargs
from trainer.models.probe import meta_twin, training_outputs
from trainer.train import best_top1, data_source, train

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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


# 3. Every AutoAugment policy the project offers runs on both loaders' paths with the installed Pillow.
def _named_policies() -> set[str]:
    """The auto_augment values the configs and recipes name."""
    named = set()
    for path in [*(ROOT / "conf").rglob("*.yaml"), *(ROOT / "recipes").rglob("*.yaml")]:
        for line in path.read_text().splitlines():
            key, _, value = line.split("#")[0].partition(":")
            if key.strip() == "auto_augment" and value.strip() not in ("", "null"):
                named.add(value.strip())
    return named


@pytest.mark.unit
def test_every_named_policy_is_tested() -> None:
    assert _named_policies() <= set(POLICIES), "a config names a policy that the tests below do not run"


@pytest.mark.unit
def test_posterize_to_zero_bits_is_black_as_tensorflow_shifts() -> None:
    image = Image.new("RGB", (4, 3), (200, 130, 7))
    assert posterize(image, 0).getextrema() == ((0, 0),) * 3  # x >> 8 << 8 == 0
    assert posterize(image, 2).getpixel((0, 0)) == (192, 128, 0)  # the two MSB kept: 0b11000000, 0b10000000, 0
    assert posterize(image, 8) is image


@pytest.mark.unit
@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
def test_auto_augment_policy_runs_on_both_loaders(policy: str) -> None:
    """300 random images through the folder loader's PIL pipeline and the FFCV loader's batched ops."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    augment = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "augment" / "imagenet.yaml"))
    augment.update(scale=[0.08, 1.0], ratio=[0.75, 4 / 3], hflip=0.5, auto_augment=policy)
    transform = build_train_transform(augment, resolution=24, mean=MEAN, std=STD, interpolation="bilinear")
    pixels = torch.randint(0, 256, (300, 24, 24, 3), dtype=torch.uint8)
    for array in pixels.numpy():
        assert transform(Image.fromarray(array)).shape == (3, 24, 24)
    batched = BatchAugment({"auto_augment": policy}, resolution=24, mean=MEAN, std=STD)
    for chunk in pixels.permute(0, 3, 1, 2).split(50):
        out = batched(chunk.contiguous())
        assert out.shape == chunk.shape and torch.isfinite(out).all()


# 4. Auxiliary heads: checked at start, and the smallest input trains, with and without the heads.
# Every catalogue model that can be built with auxiliary heads. A real step for each but NASNet-A Large (88 M
# parameters, ~3 min of CPU per step on a shared machine): its cells and auxiliary head are NASNet-A Mobile's, and
# its bound is checked on the meta device below. Models without heads: test_models.py's meta-device check.
AUX_MODELS = ["googlenet", "googlenet_bn", "inception_v3", "nasnet_a_mobile"]


@pytest.mark.unit
@pytest.mark.slow
def test_aux_models_are_every_catalogue_model_with_auxiliary_heads() -> None:
    """AUX_MODELS (one real step each below) and nasnet_a_large (the meta device: too large for a CPU step) are all
    the catalogue's networks that can be built with auxiliary heads."""
    with_heads = {name for name in list_models() if "aux_logits" in (accepted_kwargs(name) or ())}
    assert with_heads == {*AUX_MODELS, "nasnet_a_large"}


@pytest.mark.unit
def test_unweighted_aux_heads_fail_at_start_naming_both_fixes(tmp_path: Path, cache_dir: Path) -> None:
    cfg = compose_config([*tiny_overrides(tmp_path / "run", cache_dir), "model=googlenet", "data.resolution=96"])
    model = meta_twin("googlenet", 10)
    with pytest.raises(ConfigError) as error:
        check_aux_heads(cfg, model, 10)
    message = str(error.value)
    assert "2 auxiliary" in message and "loss.aux_weights=[0.3]" in message
    assert "+model.kwargs.aux_logits=false" in message
    check_aux_heads(compose_config([*cfg_overrides(tmp_path, cache_dir), "loss.aux_weights=[0.3]"]), model, 10)


def cfg_overrides(tmp_path: Path, cache_dir: Path) -> list[str]:
    return [*tiny_overrides(tmp_path / "run", cache_dir), "model=googlenet", "data.resolution=96"]


def _aux_overrides(name: str, aux: bool) -> list[str]:
    return [f"model={name}", f"+model.kwargs.aux_logits={str(aux).lower()}", *(["loss.aux_weights=[0.3]"] * aux)]


@pytest.mark.integration
@pytest.mark.slow
def test_inception_v3_with_its_aux_head_is_refused_at_start_below_its_size(tmp_path: Path, cache_dir: Path) -> None:
    named = []
    # 75 px passes the catalogue's minimum (the network without heads); 32 px is below it: both errors name the
    # minimum of the network as built, so one retry at that size works
    for resolution in (75, 32):
        cfg = _cfg(
            tmp_path / "run", cache_dir, "recipe=inception_v3", "model=inception_v3", f"data.resolution={resolution}"
        )
        with pytest.raises(
            ConfigError, match=r"auxiliary heads .* at least \d+ px; (training resolution|data\.resolution=)"
        ) as e:
            train(cfg)
        named.append(int(re.search(r"at least (\d+) px", str(e.value)).group(1)))
        assert not (tmp_path / "run").exists()  # refused before anything was written
    assert named[0] == named[1] > 75


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("aux", [True, False], ids=["with_aux", "without_aux"])
@pytest.mark.parametrize("name", AUX_MODELS)
def test_one_training_step_at_the_smallest_accepted_input(name: str, aux: bool, tmp_path: Path, cache_dir) -> None:
    """One step at exactly the smallest size the start checks accept; one pixel less fails in the network itself
    (or in the catalogue's input check, where that is the bound)."""
    torch.manual_seed(0)
    overrides = _aux_overrides(name, aux)
    probe = compose_config([*tiny_overrides(tmp_path / "run", cache_dir), *overrides])
    size = smallest_training_resolution(probe, 10)
    cfg = compose_config([*tiny_overrides(tmp_path / "run", cache_dir), *overrides, f"data.resolution={size}"])
    model = build_model(cfg, num_classes=10).train()
    check_aux_heads(cfg, model, 10)
    module = build_module(cfg, model, [str(i) for i in range(10)])
    outputs = model(torch.randn(2, 3, size, size))
    assert isinstance(outputs, tuple) == aux
    module.loss(outputs, torch.tensor([1, 7])).backward()
    with pytest.raises(RuntimeError):  # torch's size errors and our InputSizeError are RuntimeErrors
        model(torch.randn(2, 3, size - 1, size - 1))


@pytest.mark.unit
@pytest.mark.slow
@pytest.mark.parametrize("aux", [True, False], ids=["with_aux", "without_aux"])
def test_nasnet_large_smallest_input_on_the_meta_device(aux: bool, tmp_path: Path, cache_dir: Path) -> None:
    cfg = compose_config([*tiny_overrides(tmp_path / "run", cache_dir), *_aux_overrides("nasnet_a_large", aux)])
    size = smallest_training_resolution(cfg, 10)
    twin = meta_twin("nasnet_a_large", 10, aux_logits=aux)
    assert training_outputs(twin, size) == int(aux)
    assert isinstance(training_outputs(twin, size - 1), str)


# 7 and 8. What a run prints and writes on the command line: no message the user cannot act on, the run's log in
# train.log, the summary naming the data (the main job and its resume, through train.py: tests/test_train.py).
@pytest.mark.unit
def test_a_global_batch_above_the_training_set_is_named_and_logging_fits_the_epoch() -> None:
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(train_set=[0] * 100, batch_size=256), limit_train_batches=1.0, log_every_n_steps=10
    )
    with pytest.warns(UserWarning, match=r"data.batch_size=256 is larger than the training set \(100 images\)"):
        EpochLength().setup(trainer, None, "fit")
    assert trainer.log_every_n_steps == 1
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(train_set=[0] * 1437, batch_size=64), limit_train_batches=3, log_every_n_steps=10
    )
    EpochLength().setup(trainer, None, "fit")
    assert trainer.log_every_n_steps == 3


@pytest.mark.integration
@pytest.mark.slow
def test_an_export_is_shareable_and_the_login_hint_is_the_installed_cli(finished: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = export(finished / "checkpoints" / "best.ckpt", tmp_path / "export").out
    finally:
        os.umask(old)
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) == oct(0o644)
    assert (Path(sys.executable).parent / "hf").is_file()  # huggingface_hub's CLI: `hf auth login`
    assert "hf auth login" in (ROOT / "scripts" / "publish.py").read_text()


@pytest.mark.unit
def test_evaluate_writes_its_log_beside_the_checkpoints_run(tmp_path: Path) -> None:
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    cfg = compose_config([f"ckpt={ckpt}"], config_name="eval")
    assert Path(cfg.run_dir) == (tmp_path / "run").resolve()  # Hydra's output dir: no runs/eval/<date>/<time>/


@pytest.mark.unit
def test_the_summary_names_the_files_the_run_reads(tmp_path: Path, cache_dir: Path) -> None:
    for data in ("ffcv", "sample_ffcv"):
        extra = ["data.train_beton=/b/train.beton", "data.val_beton=/b/val.beton"] if data == "ffcv" else []
        cfg = compose_config([*tiny_overrides(tmp_path / "run", cache_dir), f"data={data}", *extra])
        assert data_source(cfg) == f"{cfg.data.train_beton} + {cfg.data.val_beton}"
        assert data_source(cfg).endswith("val.beton") and "None" not in data_source(cfg)
    cfg = compose_config([*tiny_overrides(tmp_path / "run", cache_dir), "data=sample"])
    assert data_source(cfg) == str(cfg.data.root)


@pytest.mark.unit
def test_the_progress_bar_shows_accuracy_in_percent_as_the_summary() -> None:
    assert percent("val/top1", 0.1222) == "12.22%" and percent("train/top5", torch.tensor(0.5)) == "50.00%"
    assert percent("val_ema/top1", 1.0) == "100.00%"
    assert percent("train/loss", 2.25) == 2.25 and percent("v_num", "abc") == "abc"
    callbacks = compose_config(["trainer.accelerator=cpu"]).callbacks
    assert callbacks.progress_bar._target_.endswith("PercentProgressBar")


@pytest.mark.unit
def test_the_model_table_is_quick_fits_the_terminal_and_caches_macs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRAINER_CACHE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "100")
    start = time.perf_counter()
    models_main([])
    table = capsys.readouterr().out
    assert time.perf_counter() - start < 5  # no model is built for the plain table
    assert "resnet18" in table and "11.69" in table and max(len(line) for line in table.splitlines()) <= 100
    assert cached_macs(["resnet18"]) == {"resnet18": 1_814_073_344}  # counted: ResNet-18's 1.8 GMACs at 224 px
    monkeypatch.setattr("trainer.models.__main__.complexity", lambda name: pytest.fail(f"{name} counted again"))
    assert cached_macs(["resnet18"]) == {"resnet18": 1_814_073_344}  # from the cache


# 5. Multi-view protocols follow the data's own flips, and their scales the data's resolution.
@pytest.mark.unit
def test_views_are_mirrored_only_where_training_flipped(tmp_path: Path, cache_dir: Path) -> None:
    digits = compose_config([*tiny_overrides(tmp_path / "run", cache_dir), "data=sample"])
    imagenet = compose_config([*tiny_overrides(tmp_path / "run", cache_dir), "data=imagenet"])
    assert not trained_with_flips(digits) and trained_with_flips(imagenet)
    assert trained_with_flips(compose_config([*tiny_overrides(tmp_path / "r", cache_dir), "augment.hflip=0.5"]))
    image = torch.arange(3 * 8 * 10, dtype=torch.float32).reshape(3, 8, 10)
    assert ten_crop(image, 6, flips=False).shape == (5, 3, 6, 6) and ten_crop(image, 6).shape == (10, 3, 6, 6)
    plain = Protocol("ten_crop", resolution=32, crop_ratio=0.875, flips=False)
    assert plain.views_per_image == 5 and Protocol("ten_crop", resolution=32, crop_ratio=0.875).views_per_image == 10
    scales = Protocol("multi_scale", resolution=32, crop_ratio=1.0, scales=(224, 448), flips=False)
    assert scales.views_per_image == 2 and scales.pixel_scales == [32, 64]  # x 32/224
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(4))
    x = torch.randn(2, 3, 6, 6)
    expected = model(x).softmax(-1)  # one scale, no mirror: the plain softmax
    assert torch.allclose(score_scales(model, [list(x)], flips=False), expected, atol=1e-6)


# 6. scripts/profile_model.py: a short latency sweep on the CPU unless asked, and a line per step.
@pytest.mark.unit
def test_profile_on_the_cpu_sweeps_briefly_and_says_what_it_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scripts import profile_model as script

    assert script.parse_args(["model=vgg16", "device=cpu"]).batch_sizes == [1, 8]
    assert script.parse_args(["model=vgg16", "device=cpu", "--full-sweep"]).batch_sizes == [1, 2, 4, 8, 16, 32, 64]
    assert script.parse_args(["model=vgg16", "device=cuda"]).batch_sizes == [1, 2, 4, 8, 16, 32, 64]
    script.main(["model=resnet18", "resolution=32", "--repeats", "1", "--warmup", "0", f"out={tmp_path}", "device=cpu"])
    progress = capsys.readouterr().err.splitlines()
    assert [line for line in progress if "latency at batch" in line] == [
        "... resnet18: latency at batch 1 (0 warm-up + 1 timed forwards on cpu)",
        "... resnet18: latency at batch 8 (0 warm-up + 1 timed forwards on cpu)",
    ]
    assert any("multiply-adds" in line for line in progress) and any("training memory" in line for line in progress)


# 5. scripts/report.py: the paper's figure only beside a run on the paper's data; failed runs listed.
def _fake_run(run: Path, data: dict, results: dict | None) -> None:
    run.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"model": {"name": "resnet18", "kwargs": {}}, "data": data}), run / "config.yaml")
    if results is not None:
        (run / "results.json").write_text(json.dumps(results))


@pytest.mark.unit
def test_report_compares_with_the_paper_only_on_its_data_and_lists_failed_runs(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("scripts_report_i24", ROOT / "scripts" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    done = {"top1": 70.0, "top5": 89.0, "epochs": 90, "params": 11_689_512, "wall_time_s": 1.0}
    imagenet = {"root": "/data/imagenet", "num_classes": 1000, "resolution": 224, "sample": False}
    _fake_run(tmp_path / "runs" / "a_imagenet", imagenet, done)
    _fake_run(tmp_path / "runs" / "b_digits", {"num_classes": 10, "resolution": 32, "sample": True}, done)
    _fake_run(tmp_path / "runs" / "c_small", {**imagenet, "resolution": 128}, done)  # not the paper's resolution
    _fake_run(tmp_path / "runs" / "d_failed", imagenet, None)
    rows = {Path(r["run"]).name: r for r in report.main([str(tmp_path / "runs")])}
    assert rows["a_imagenet"]["paper_top1"] == pytest.approx(get_entry("resnet18").top1)  # the report's source
    assert rows["a_imagenet"]["diff_top1"] == pytest.approx(70.0 - rows["a_imagenet"]["paper_top1"])
    assert rows["b_digits"]["paper_top1"] is None and rows["c_small"]["paper_top1"] is None
    assert rows["d_failed"]["status"] == "failed" and rows["d_failed"]["top1"] is None
    digits_only = report.markdown([rows["b_digits"]])
    assert "paper_top1" not in digits_only and "70.00" in digits_only


@pytest.mark.unit
def test_write_ffcv_explains_a_size_made_of_pages() -> None:
    mib = 1 << 20
    small = WriteResult(Path("s.beton"), 60, [], 1.0, 16 * mib + 4096, mib // 10, page_size=8 * mib, workers=2)
    assert "page allocation" in small.summary() and "num_workers=1" in small.summary()
    big = WriteResult(Path("b.beton"), 10_000, [], 9.0, 900 * mib, 1000 * mib, page_size=8 * mib, workers=2)
    assert "page allocation" not in big.summary()


@pytest.mark.unit
def test_wandb_is_not_told_the_deprecated_anonymous_setting_and_keeps_its_summary_quiet(tmp_path: Path) -> None:
    from trainer.engine.wandb_logger import RunLogger

    logger = RunLogger(save_dir=str(tmp_path), project="p", name="n", offline=True)
    assert "anonymous" not in logger._wandb_init  # wandb 0.31 warns about any value given, None included
    assert logger._wandb_init["settings"] == {"quiet": True}
