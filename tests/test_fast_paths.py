"""The GPU fast paths, proven on the CPU: each flag trains and matches the plain path's losses, compile matches
eager and falls back to it, the training step never waits for the device, and the throughput benchmark runs."""

from __future__ import annotations

import json
import os
import subprocess
import traceback
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn as nn
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
from torch.utils._python_dispatch import TorchDispatchMode

from tests.helpers import PYTHON, ROOT
from trainer.builders import build_datamodule, build_model, build_module, build_trainer
from trainer.engine import create_optimizer
from trainer.engine.fast_paths import compile_model, is_compiled, on_cuda, resolve_switch
from trainer.engine.optim import step_impl_kwargs
from trainer.errors import ConfigError

# ops whose result the host must wait for on CUDA: reading a value, or an output size that depends on the data
SYNC_OPS = (
    "_local_scalar_dense",
    "nonzero",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "bincount",
    "masked_select",
    "equal",
    "allclose",
    "is_nonzero",
)


def _cpu_only_check() -> bool:
    """Whether this read is one_hot's range check of its labels (torchmetrics' top-5 accuracy): it reads the labels'
    min and max with .item() on the CPU only; on CUDA the scatter's device assert does (ATen, Onehot.cpp)."""
    torch_dir = f"{Path(torch.__file__).parent}{os.sep}"
    stack = reversed(traceback.extract_stack())
    caller = next(f for f in stack if f.filename != __file__ and not f.filename.startswith(torch_dir))
    return "one_hot(" in (caller.line or "")


class SyncCounter(TorchDispatchMode):
    """Counts host syncs: the ops above, and tensor-to-host conversions that do not dispatch (tolist, numpy,
    cpu, which on a CPU tensor return without an op)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.events: list[str] = []
        for name in ("tolist", "numpy", "cpu"):
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _name=name, _original=original, **kwargs):
                if self.active:
                    self.events.append(f"Tensor.{_name}")
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)
        self.active = False

    def __enter__(self):
        self.active = True
        return super().__enter__()

    def __exit__(self, *exc):
        self.active = False
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS and not (name == "_local_scalar_dense" and _cpu_only_check()):
            self.events.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.integration
def test_training_steps_do_not_sync_between_logging_steps(tiny_cfg, monkeypatch) -> None:
    """Every training batch (fetch, step, backward, optimizer, hooks, progress bar, logging) is run under a
    sync counter: only Lightning's logging steps (every trainer.log_every_n_steps) may wait for the device."""
    counter = SyncCounter(monkeypatch)
    per_batch: list[tuple[bool, list[str]]] = []
    advance = _TrainingEpochLoop.advance

    def counted_advance(loop, data_fetcher):
        log_step = (loop._batches_that_stepped + 1) % loop.trainer.log_every_n_steps == 0
        start = len(counter.events)
        with counter:
            advance(loop, data_fetcher)
        per_batch.append((log_step, counter.events[start:]))

    monkeypatch.setattr(_TrainingEpochLoop, "advance", counted_advance)
    # one loader worker: decoding and augmentation (which read random numbers with .item()) happen elsewhere
    cfg = tiny_cfg(
        "data.batch_size=8",
        "data.num_workers=1",
        "data.persistent_workers=false",
        "trainer.limit_train_batches=6",
        "trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=3",
        "trainer.enable_progress_bar=true",
        "ema.decay=0.99",
    )
    L.seed_everything(0)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, build_model(cfg, num_classes=datamodule.num_classes), datamodule.classes)
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule)

    assert len(per_batch) == 6
    syncing = {i: events for i, (log_step, events) in enumerate(per_batch) if events and not log_step}
    assert not syncing, f"host syncs in training steps that do not log: {syncing}"
    assert any(events for log_step, events in per_batch if log_step)  # the counter sees the logging steps' syncs
    assert trainer.progress_bar_metrics["train/loss"] > 0
    assert trainer.logged_metrics["train/loss_epoch"] > 0


def _losses(tiny_cfg, *overrides: str) -> list[float]:
    """The losses of three training steps on the sample set, all else equal."""
    cfg = tiny_cfg(
        "data.batch_size=8", "trainer.limit_train_batches=3", "trainer.limit_val_batches=0", "optim.lr=0.01", *overrides
    )
    L.seed_everything(0)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, build_model(cfg, num_classes=datamodule.num_classes), datamodule.classes)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = build_trainer(cfg, callbacks=[Record()], logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=datamodule)
    return losses


PLAIN = ("trainer.precision=32-true", "model.channels_last=false", "optim.step_impl=for_loop", "compile=false")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "tolerance"),
    [
        (("model.channels_last=true",), 1e-3),
        (("optim.step_impl=foreach",), 1e-4),
        (("optim.step_impl=fused",), 1e-4),
        (("trainer.precision=bf16-mixed",), 5e-2),
        (("trainer.precision=bf16-mixed", "model.channels_last=true", "optim.step_impl=foreach"), 5e-2),
    ],
    ids=["channels_last", "foreach", "fused", "bf16", "all"],
)
def test_fast_path_flags_match_the_plain_path(tiny_cfg, flags, tolerance) -> None:
    plain = _losses(tiny_cfg, *PLAIN)
    fast = _losses(tiny_cfg, *PLAIN, *flags)
    assert len(fast) == len(plain) == 3
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(plain), rtol=tolerance, atol=tolerance)
    assert plain[0] != plain[2]  # the optimizer steps changed the weights between the compared losses


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.unit
@pytest.mark.slow
def test_compiled_model_matches_eager_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    eager = TinyNet()
    compiled = TinyNet()
    compiled.load_state_dict(eager.state_dict())
    compile_model(compiled, "tiny")  # inductor: C++ kernels built by gcc on the CPU
    x = torch.randn(4, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the model really compiled
        out = compiled(x)
    assert is_compiled(compiled)
    reference = eager(x)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    out.sum().backward()
    reference.sum().backward()
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    assert set(compiled.state_dict()) == set(eager.state_dict())  # in place: no _orig_mod. prefix


def failing_backend(gm, example_inputs):
    raise RuntimeError("no kernel for this op\nlong traceback details")


@pytest.mark.unit
def test_compile_failure_falls_back_to_eager_with_one_warning() -> None:
    torch.manual_seed(0)
    model = TinyNet()
    compile_model(model, "tinynet", backend=failing_backend)
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"torch.compile failed for model 'tinynet' \(.*no kernel for this op\)") as w:
        out = model(x)
    assert not any("long traceback" in str(m.message) for m in w)  # only the error's first line
    assert not is_compiled(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: later calls run eagerly without a word
        torch.testing.assert_close(model(x), out)
    torch._dynamo.reset()


@pytest.mark.unit
def test_compile_fallback_reraises_the_models_own_error() -> None:
    model = TinyNet()
    compile_model(model, "tinynet", backend=failing_backend)
    with pytest.raises(RuntimeError, match="channels"), warnings.catch_warnings():
        warnings.simplefilter("error")  # not blamed on the compiler
        model(torch.randn(2, 5, 8, 8))  # 5 channels into a 3-channel conv: fails eagerly too
    assert is_compiled(model)
    torch._dynamo.reset()


@pytest.mark.unit
def test_switches_default_on_with_cuda_only(tiny_cfg, monkeypatch) -> None:
    cfg = tiny_cfg()
    assert cfg.compile is None and cfg.model.channels_last is None  # defaults: decided by the device
    assert not on_cuda(cfg) and not resolve_switch(None, cfg) and resolve_switch(True, cfg)
    model = build_model(cfg, num_classes=10)
    module = build_module(cfg, model, [str(i) for i in range(10)])
    assert not model.conv1.weight.is_contiguous(memory_format=torch.channels_last) and not is_compiled(model)
    assert module.config["compile"] is False and module.config["model"]["channels_last"] is False  # as decided
    assert cfg.compile is None and cfg.model.channels_last is None  # the caller's config is not written into

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = tiny_cfg("trainer.accelerator=auto")
    assert on_cuda(gpu) and on_cuda(tiny_cfg("trainer.accelerator=gpu"))
    model = build_model(gpu, num_classes=10)  # built on the CPU: only the flags are CUDA's
    module = build_module(gpu, model, [str(i) for i in range(10)])
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last) and is_compiled(model)
    assert module.memory_format == torch.channels_last and module.config["model"]["channels_last"] is True
    off = tiny_cfg("trainer.accelerator=auto", "compile=false", "model.channels_last=false")
    assert not resolve_switch(off.compile, off) and not resolve_switch(off.model.channels_last, off)
    torch._dynamo.reset()


@pytest.mark.unit
def test_gpu_trainer_config_is_bf16_with_cudnn_benchmark(tiny_cfg) -> None:
    cfg = tiny_cfg("trainer=gpu")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.benchmark is True


@pytest.mark.unit
@pytest.mark.parametrize(
    ("opt", "step_impl", "device", "expected"),
    [
        ("momentum", "auto", "cuda", {"fused": True}),
        ("adamw", "auto", "cuda", {"fused": True}),
        ("momentum", "auto", "cpu", {"foreach": True}),
        ("rmsprop", "auto", "cuda", {"foreach": True}),  # torch's RMSprop has no fused step
        ("momentum", "for_loop", "cuda", {"foreach": False}),
        ("adam", "fused", "cpu", {"fused": True}),
    ],
)
def test_step_impl_kwargs(opt, step_impl, device, expected) -> None:
    assert step_impl_kwargs(opt, step_impl, device) == expected


@pytest.mark.unit
def test_step_impl_errors_name_the_option() -> None:
    with pytest.raises(ConfigError, match="optim.step_impl='fast' is not one of auto, fused"):
        step_impl_kwargs("momentum", "fast", "cpu")
    with pytest.raises(ConfigError, match="optimizer 'rmsprop' has no fused implementation"):
        step_impl_kwargs("rmsprop", "fused", "cuda")


@pytest.mark.unit
def test_default_optimizer_steps_with_foreach_on_cpu() -> None:
    optimizer = create_optimizer(TinyNet(), opt="sgd")
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["foreach"] is True
    assert optimizer.defaults["fused"] is None


@pytest.mark.unit
def test_loader_pins_memory_where_cuda_is(tiny_cfg, monkeypatch) -> None:
    """On a CUDA machine the folder loader pins its batches (the page-locked copy Lightning's non_blocking
    host-to-device transfer needs to overlap the step); without CUDA it does not (pinning would warn and do nothing).
    The non_blocking copy itself is Lightning's (move_data_to_device); the real pinned batch: the gpu test below."""
    datamodule = build_datamodule(tiny_cfg())
    datamodule.setup("fit")
    assert not datamodule.train_dataloader().pin_memory or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    datamodule = build_datamodule(tiny_cfg("trainer=gpu"))
    datamodule.setup("fit")
    assert datamodule.train_dataloader().pin_memory


@pytest.mark.gpu
@pytest.mark.integration
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_loader_batches_are_pinned_on_a_gpu_machine(tiny_cfg) -> None:
    datamodule = build_datamodule(tiny_cfg("trainer=gpu"))
    datamodule.setup("fit")
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.is_pinned() and labels.is_pinned()
    moved = move_data_to_device((images, labels), torch.device("cuda", 0))
    assert all(t.device.type == "cuda" for t in moved)


@pytest.mark.system
@pytest.mark.slow
def test_train_throughput_benchmark_runs_end_to_end(tmp_path, cache_dir, sample_root) -> None:
    out = tmp_path / "throughput.json"
    args = [
        "--models",
        "resnet18",
        "--batch-sizes",
        "8",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--peak-size",
        "256",
        "--json",
        str(out),
        "data.resolution=32",
        "data.num_workers=0",
        f"paths.cache_dir={cache_dir}",
    ]
    proc = subprocess.run(
        [PYTHON, "benchmarks/train_throughput.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["environment"]["device"] == "cpu" and result["environment"]["peak_tflops"] > 0
    (row,) = result["rows"]
    assert row["model"] == "resnet18" and row["batch_size"] == 8 and row["resolution"] == 32
    assert set(row["images_per_sec"]) == {"plain/synthetic", "lightning/synthetic", "plain/loader", "lightning/loader"}
    assert all(rate > 0 for rate in row["images_per_sec"].values())
    assert row["macs_per_image"] > 0 and row["peak_fraction"] > 0 and row["framework_ratio_loader"] > 0
    assert "resnet18" in proc.stdout and "TFLOP/s" in proc.stdout
