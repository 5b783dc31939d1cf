"""The training machinery on its own: losses with auxiliary heads, weight-decay groups, lr scaling, schedules
against their closed forms, atomic writes, the checkpoint reader's policy and the raw / EMA weight choice."""

from __future__ import annotations

import math
import pickle
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.engine import (
    ClassificationModule,
    atomic_torch_save,
    create_optimizer,
    create_scheduler,
    metrics,
    param_groups,
    scale_lr,
)
from trainer.errors import CheckpointError, ConfigError
from trainer.io import (
    _umask,
    atomic_folder,
    atomic_write,
    atomic_write_text,
    model_weights,
    read_checkpoint,
    select_weights,
    strip_prefixes,
)
from trainer.models import create_model


class _AuxNet(nn.Module):
    """A model that, like timm's inception_v3(aux_logits=True), returns (main, aux) in training mode."""

    def __init__(self, heads: int = 2) -> None:
        super().__init__()
        self.main = nn.Linear(4, 3)
        self.aux = nn.ModuleList(nn.Linear(4, 3) for _ in range(heads))

    def forward(self, x):
        if self.training:
            return (self.main(x), *(a(x) for a in self.aux))
        return self.main(x)


def _module(model: nn.Module, **kwargs) -> ClassificationModule:
    return ClassificationModule(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), num_classes=3, **kwargs)


@pytest.mark.unit
def test_aux_losses_are_weighted_per_head() -> None:
    torch.manual_seed(0)
    model, x, y = _AuxNet(), torch.randn(8, 4), torch.randint(0, 3, (8,))
    module = _module(model, aux_weights=[0.3, 0.5], label_smoothing=0.1)
    main, aux1, aux2 = model(x)
    expected = (
        F.cross_entropy(main, y, label_smoothing=0.1)
        + 0.3 * F.cross_entropy(aux1, y, label_smoothing=0.1)
        + 0.5 * F.cross_entropy(aux2, y, label_smoothing=0.1)
    )
    assert torch.allclose(module.loss((main, aux1, aux2), y), expected)
    # one weight applies to every head
    single = _module(model, aux_weights=[0.3]).loss((main, aux1, aux2), torch.zeros(8, dtype=torch.long))
    assert torch.isfinite(single)


@pytest.mark.unit
def test_aux_outputs_without_weights_is_a_config_error() -> None:
    model = _AuxNet(heads=2)
    with pytest.raises(ConfigError, match="2 auxiliary outputs"):
        _module(model, aux_weights=[0.3, 0.3, 0.3]).loss(model(torch.randn(2, 4)), torch.zeros(2, dtype=torch.long))


@pytest.mark.unit
def test_weight_decay_groups_by_module_type() -> None:
    model = create_model("resnet18", num_classes=10)
    decay, no_decay = param_groups(model, 1e-4, decay_norm_and_bias=False)
    decayed = {id(p) for p in decay["params"]}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            exempt = isinstance(module, nn.BatchNorm2d) or name == "bias"
            assert (id(p) in decayed) != exempt, (type(module).__name__, name)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-4
    assert len(param_groups(model, 1e-4, decay_norm_and_bias=True)) == 1


@pytest.mark.unit
def test_create_optimizer_uses_timm_and_scales_lr() -> None:
    model = create_model("resnet18", num_classes=10)
    opt = create_optimizer(
        model,
        opt="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        ref_batch_size=256,
        lr_scaling="linear",
        global_batch_size=64,
    )
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    assert opt.param_groups[0]["nesterov"] is False
    nesterov = create_optimizer(model, opt="sgd", lr=0.1, nesterov=True)
    assert nesterov.param_groups[0]["nesterov"] is True
    with pytest.raises(ConfigError, match="unknown optimizer optim.opt='sdg'.*sgd"):
        create_optimizer(model, opt="sdg")


@pytest.mark.unit
def test_scale_lr() -> None:
    assert scale_lr(0.1, 256, 1024, "linear") == pytest.approx(0.4)
    assert scale_lr(0.1, 256, 1024, "sqrt") == pytest.approx(0.2)
    assert scale_lr(0.1, 256, 1024, "none") == 0.1
    with pytest.raises(ConfigError, match="optim.lr_scaling='cubic'"):
        scale_lr(0.1, 256, 64, "cubic")


def _lr_curve(sched: str, interval: str, epochs: int, per_epoch: int, **kwargs) -> list[float]:
    """The lr in force at every optimizer step, driven the way ClassificationModule drives the scheduler."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = create_scheduler(
        opt, num_epochs=epochs, updates_per_epoch=per_epoch, sched=sched, interval=interval, **kwargs
    )
    lrs, step = [], 0
    for epoch in range(epochs):
        for _ in range(per_epoch):
            lrs.append(opt.param_groups[0]["lr"])
            step += 1
            if interval == "step":
                scheduler.step_update(num_updates=step)
        if interval == "epoch":
            scheduler.step(epoch=epoch + 1)
    return lrs


@pytest.mark.unit
def test_multistep_per_epoch_matches_closed_form() -> None:
    lrs = _lr_curve("multistep", "epoch", epochs=9, per_epoch=3, milestones=[3, 6], decay_rate=0.1)
    expected = [0.1 * 0.1 ** sum(e >= m for m in (3, 6)) for e in range(9) for _ in range(3)]
    assert lrs == pytest.approx(expected)


@pytest.mark.unit
def test_step_every_fractional_period_per_step() -> None:
    # 0.94 every 2 epochs, realised per step (the Inception recipe's form): lr = 0.1 * 0.94 ** floor(t / 2)
    lrs = _lr_curve("step", "step", epochs=6, per_epoch=5, decay_epochs=1.4, decay_rate=0.94)
    expected = [0.1 * 0.94 ** math.floor((i / 5) / 1.4) for i in range(30)]
    assert lrs == pytest.approx(expected)


@pytest.mark.unit
def test_cosine_per_step_with_warmup_matches_closed_form() -> None:
    per_epoch, epochs, warm = 4, 5, 1
    lrs = _lr_curve("cosine", "step", epochs=epochs, per_epoch=per_epoch, warmup_epochs=warm, warmup_lr=0.0)
    total, warm_t = epochs * per_epoch, warm * per_epoch
    expected = [
        0.1 * t / warm_t if t < warm_t else 0.5 * 0.1 * (1 + math.cos(math.pi * t / total)) for t in range(total)
    ]
    assert lrs == pytest.approx(expected)


@pytest.mark.unit
def test_exponential_every_fractional_period() -> None:
    # NASNet's / EfficientNet's 0.97 every 2.4 epochs, per step: lr = 0.1 * 0.97 ** floor(t / 2.4)
    lrs = _lr_curve("exponential", "step", epochs=8, per_epoch=5, decay_epochs=2.4, decay_rate=0.97)
    assert lrs == pytest.approx([0.1 * 0.97 ** math.floor((i / 5) / 2.4) for i in range(40)])


@pytest.mark.unit
@pytest.mark.parametrize("power", [0.5, 4.0])
def test_poly_matches_closed_form(power: float) -> None:
    # SqueezeNet (power 0.5) and Darknet (power 4): lr = 0.1 (1 - t / T) ^ power, per step
    lrs = _lr_curve("poly", "step", epochs=3, per_epoch=4, power=power)
    assert lrs == pytest.approx([0.1 * (1 - t / 12) ** power for t in range(12)])


@pytest.mark.unit
def test_linear_with_warmup_prefix_is_ffcvs_ramp() -> None:
    # FFCV: 0 -> peak at the end of epoch 2 (warm-up), then linearly to 0 at the end of epoch 8 (np.interp form)
    lrs = _lr_curve("linear", "step", epochs=8, per_epoch=5, warmup_epochs=2, warmup_prefix=True)
    expected = [0.1 * t / 10 if t < 10 else 0.1 * (1 - (t - 10) / 30) for t in range(40)]
    assert lrs == pytest.approx(expected)
    assert max(lrs) == pytest.approx(0.1)


@pytest.mark.unit
def test_plateau_divides_when_the_metric_stops_improving() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = create_scheduler(
        opt, num_epochs=20, updates_per_epoch=1, sched="plateau", patience_epochs=1, decay_rate=0.1, min_lr=1e-4
    )
    assert scheduler.monitor == "val/top1"
    lrs = []
    for epoch, top1 in enumerate([0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3], start=1):
        scheduler.step(epoch=epoch, metric=top1)
        lrs.append(opt.param_groups[0]["lr"])
    # improving for 3 epochs, then one cut per 2 epochs without improvement (patience 1), floored at min_lr
    assert lrs[:3] == pytest.approx([0.1] * 3)
    assert lrs[4] == pytest.approx(0.01) and lrs[6] == pytest.approx(0.001) and lrs[-1] == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="interval=epoch"):
        create_scheduler(opt, num_epochs=2, updates_per_epoch=1, sched="plateau", interval="step")


@pytest.mark.unit
def test_plateau_state_survives_a_checkpoint() -> None:
    """Patience counters are in the checkpoint: a resumed run cuts the lr when the uninterrupted one does."""
    metrics = [0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]

    def run(resume_at: int | None) -> list[float]:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        kwargs = dict(num_epochs=10, updates_per_epoch=1, sched="plateau", patience_epochs=3)
        scheduler, lrs = create_scheduler(opt, **kwargs), []
        for epoch, top1 in enumerate(metrics, start=1):
            if epoch == resume_at:  # a new process: fresh scheduler and optimizer, states from the checkpoint
                state, opt_state = scheduler.state_dict(), opt.state_dict()
                opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
                opt.load_state_dict(opt_state)
                scheduler = create_scheduler(opt, **kwargs)
                scheduler.load_state_dict(state)
            scheduler.step(epoch=epoch, metric=top1)
            lrs.append(opt.param_groups[0]["lr"])
        return lrs

    uninterrupted = run(None)
    assert uninterrupted[-1] == pytest.approx(0.01)
    assert run(resume_at=4) == pytest.approx(uninterrupted)


@pytest.mark.unit
def test_tf_rmsprop_puts_epsilon_inside_the_square_root() -> None:
    """timm's rmsproptf (the Inception papers' TensorFlow form) against torch's RMSProp on one known gradient
    sequence, both written out: TF's ms starts at 1 and divides by sqrt(ms + eps); torch's starts at 0 and divides
    by sqrt(ms) + eps. With eps = 1.0 (Inception v3) the steps differ by far more than rounding."""
    grads = [torch.tensor([0.5]), torch.tensor([-1.0]), torch.tensor([2.0])]
    lr, decay, eps = 0.1, 0.9, 1.0

    def run(opt_name: str) -> float:
        w = nn.Parameter(torch.zeros(1))
        opt = create_optimizer(nn.Linear(1, 1), opt=opt_name, lr=lr, momentum=0.0, alpha=decay, eps=eps)
        opt.param_groups[0]["params"] = [w]
        opt.param_groups[1:] = []
        for g in grads:
            w.grad = g.clone()
            opt.step()
        return w.item()

    tf_w, ms = 0.0, 1.0
    torch_w, ms0 = 0.0, 0.0
    for g in (g.item() for g in grads):
        ms = decay * ms + (1 - decay) * g * g
        tf_w -= lr * g / math.sqrt(ms + eps)
        ms0 = decay * ms0 + (1 - decay) * g * g
        torch_w -= lr * g / (math.sqrt(ms0) + eps)
    assert run("rmsproptf") == pytest.approx(tf_w, rel=1e-5)
    assert run("rmsprop") == pytest.approx(torch_w, rel=1e-5)
    assert abs(tf_w - torch_w) > 0.01


@pytest.mark.unit
def test_depthwise_filters_can_be_exempt_from_weight_decay() -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8, bias=False), nn.Conv2d(8, 16, 1, bias=False))
    groups = param_groups(model, 4e-5, decay_norm_and_bias=False, decay_depthwise=False)
    assert [p.shape for p in groups[0]["params"]] == [(16, 8, 1, 1)]
    assert [p.shape for p in groups[1]["params"]] == [(8, 1, 3, 3)] and groups[1]["weight_decay"] == 0.0
    assert len(param_groups(model, 4e-5, decay_norm_and_bias=False)[0]["params"]) == 2  # default: decayed


@pytest.mark.unit
def test_ema_after_k_steps_is_the_closed_form() -> None:
    """ema_1 = w_1, ema_k = d ema_(k-1) + (1 - d) w_k, over the weights after each optimizer step."""
    torch.manual_seed(0)
    model, decay = nn.Linear(3, 2), 0.9
    module = ClassificationModule(
        model, lambda m: torch.optim.SGD(m.parameters(), lr=0.5), num_classes=2, ema_decay=decay
    )
    assert not any(p.requires_grad for p in module.ema.parameters())
    opt = module.optimizer_factory(model)
    weights = []
    for step in range(1, 6):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, 3)), torch.tensor([0, 1, 1, 0])).backward()
        opt.step()
        weights.append(model.weight.detach().clone())
        module.ema.update(model, step=step)
    expected = weights[0]
    for w in weights[1:]:
        expected = decay * expected + (1 - decay) * w
    torch.testing.assert_close(module.ema.module.weight, expected)
    with pytest.raises(ConfigError, match="ema.decay"):
        ClassificationModule(nn.Linear(3, 2), lambda m: None, num_classes=2, ema_decay=1.0)


@pytest.mark.unit
def test_bad_sched_interval() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match="sched.interval='epochs'"):
        create_scheduler(opt, num_epochs=1, updates_per_epoch=1, interval="epochs")


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated by an object that fails half-way through pickling)")


@pytest.mark.unit
def test_failed_checkpoint_write_keeps_last_good_file(tmp_path) -> None:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"epoch": 1, "w": torch.ones(3)}, path)
    with pytest.raises((RuntimeError, pickle.PicklingError)):
        atomic_torch_save({"epoch": 2, "w": torch.zeros(1000), "bad": _Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left behind


@pytest.mark.unit
def test_failed_file_or_folder_write_keeps_the_previous_one(tmp_path) -> None:
    path = tmp_path / "results.json"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError, match="half-way"), atomic_write(path) as f:
        f.write("new, cut short")
        raise RuntimeError("half-way")
    assert path.read_text() == "old\n" and oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    folder = tmp_path / "export"
    with atomic_folder(folder) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError, match="half-way"), atomic_folder(folder, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("second")
        raise RuntimeError("half-way")
    assert [p.name for p in folder.iterdir()] == ["a.txt"]
    with pytest.raises(OSError), atomic_folder(folder) as tmp:  # a full folder is replaced only with overwrite
        (tmp / "b.txt").write_text("second")
    with atomic_folder(folder, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert [p.name for p in folder.iterdir()] == ["b.txt"]
    assert oct(folder.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # mkdtemp's would be 0o700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "results.json"]  # no temporary left behind


@pytest.mark.unit
def test_checkpoint_reading_policy_and_weight_choice(tmp_path) -> None:
    """One reader refuses pickled objects in a train.py checkpoint as in a foreign weights file; raw / ema name the
    checkpoint's two sets of weights, whose keys lose their wrapper prefixes (torch.compile's too) once."""
    w = torch.ones(1)
    state = {"model.fc.w": w, "model._orig_mod.model.w": w, "ema.module.fc.w": w, "ema.module._orig_mod.fc.b": w}
    assert set(model_weights(state, "raw")) == {"fc.w", "model.w"}  # a backbone's own `model` submodule stays
    assert set(model_weights(state, "ema")) == {"fc.w", "fc.b"}
    wrapped = {"module.model._orig_mod.x": w, "y": w}  # DDP, a LightningModule, torch.compile: in any order
    assert set(strip_prefixes(wrapped, ("model.", "module.", "_orig_mod."))) == {"x", "y"}
    assert select_weights(None, True, key="eval.weights", path="c") == ["raw", "ema"]
    assert select_weights(None, False, key="eval.weights", path="c") == ["raw"]
    assert select_weights("ema", True, key="weights", path="c") == ["ema"]
    with pytest.raises(ConfigError, match="weights='auto' is not one of raw, ema"):
        select_weights("auto", True, key="weights", path="c")
    with pytest.raises(CheckpointError, match="weights=ema: checkpoint 'c' has no EMA weights"):
        select_weights("ema", False, key="weights", path="c")
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": state, "trainer_config": {"run_dir": tmp_path}}, pickled)  # a Path: a pickled object
    with pytest.raises(CheckpointError, match="holds pickled Python objects .*pathlib"):
        read_checkpoint(pickled)
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": state}, bare)
    with pytest.raises(CheckpointError, match="has no saved config"):
        read_checkpoint(bare)


@pytest.mark.unit
def test_channels_last_model_and_inputs(tiny_cfg) -> None:
    from trainer.builders import build_model, build_module

    cfg = tiny_cfg("model.channels_last=true")
    model = build_model(cfg, num_classes=10)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    module = build_module(cfg, model, [str(i) for i in range(10)])
    reference = create_model("resnet18", num_classes=10)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    module.eval()
    reference.eval()
    with torch.no_grad():  # same outputs as the contiguous model, within float tolerance
        torch.testing.assert_close(module(x.contiguous(memory_format=torch.channels_last)), reference(x))
    assert module.memory_format == torch.channels_last


@pytest.mark.unit
def test_epoch_metrics_survive_a_checkpoint_and_weigh_every_sample() -> None:
    """The running accuracy and mean loss of an epoch, saved mid-epoch and put back into fresh metrics, go on to the
    figures of the uninterrupted epoch: counts over every sample (batches of unequal size weigh by their size)."""
    torch.manual_seed(0)
    batches = [(torch.randn(n, 10), torch.randint(0, 10, (n,)), torch.rand(())) for n in (8, 3, 5)]

    def run(part: list, into: dict | None = None) -> dict:
        m = into or {**metrics.accuracy(10), "loss": metrics.mean()}  # as the module's epoch metrics
        for logits, targets, loss in part:
            m["top1"].update(logits, targets)
            m["top5"].update(logits, targets)
            m["loss"].update(loss.expand(len(targets)))
        return m

    def figures(m: dict) -> dict[str, float]:
        return {name: float(metric.compute()) for name, metric in m.items()}

    whole = figures(run(batches))
    resumed = {**metrics.accuracy(10), "loss": metrics.mean()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # restored states count as updated: compute() does not warn
        metrics.load_states(resumed, pickle.loads(pickle.dumps(metrics.states(run(batches[:1])))), "cpu")
        assert figures(resumed) == figures(run(batches[:1]))
    assert figures(run(batches[1:], into=resumed)) == whole
    count = sum(len(t) for _, t, _ in batches)
    assert whole == pytest.approx(
        {
            "top1": sum(int((x.argmax(1) == t).sum()) for x, t, _ in batches) / count,
            "top5": sum(int((x.topk(5).indices == t[:, None]).any(1).sum()) for x, t, _ in batches) / count,
            "loss": sum(float(loss) * len(t) for _, t, loss in batches) / count,
        }
    )
    older = {"loss": {"sum": torch.tensor(3.0), "weight": 4.0}}  # written before: the epoch counts from the resume
    with pytest.warns(UserWarning, match="'loss' is in an older format"):
        metrics.load_states(resumed, older, "cpu")
