"""Stochastic depth in the paper's batch-wise form and timm's per-sample form, the linear-decay rule, a drop-path
rate scheduled over training, auxiliary heads, and bad model input (unknown kwargs, too small a resolution)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.utils import instantiate
from timm.layers import DropPath

from trainer.builders import build_datamodule, build_model, build_module, build_trainer
from trainer.engine import ClassificationModule, ScheduledDropPath
from trainer.errors import ConfigError
from trainer.models import create_model
from trainer.models.layers import BatchDropPath
from trainer.models.regularization import (
    apply_linear_decay,
    drop_path_modules,
    set_drop_path_mode,
    set_drop_path_rate,
    survival_probs,
)


class _Residual(nn.Module):
    """x + drop_path(branch(x)), the way timm's blocks place their drop-path."""

    def __init__(self, drop_path: nn.Module) -> None:
        super().__init__()
        self.branch = nn.Linear(4, 4)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.branch(x))


def _kept_fraction_per_draw(block: _Residual, x: torch.Tensor, draws: int) -> torch.Tensor:
    """Per draw and sample: 1 where the branch was added in full, 0 where it was dropped."""
    branch = block.branch(x)
    kept = []
    with torch.no_grad():
        for _ in range(draws):
            delta = block(x) - x
            full = torch.isclose(delta, branch, atol=1e-6).all(dim=1)
            absent = (delta == 0).all(dim=1)
            assert (full | absent).all(), "a branch is neither fully kept (unscaled) nor dropped"
            kept.append(full.float())
    return torch.stack(kept)


def _assert_binomial(count: float, n: int, p: float) -> None:
    assert abs(count - n * p) < 4 * math.sqrt(n * p * (1 - p)), (count, n, p)


@pytest.mark.unit
def test_batch_mode_keeps_or_drops_the_branch_for_the_whole_batch_without_rescaling() -> None:
    torch.manual_seed(0)
    block, x, draws = _Residual(BatchDropPath(survival_prob=0.7)).train(), torch.randn(16, 4), 400
    kept = _kept_fraction_per_draw(block, x, draws)
    per_draw = kept.mean(dim=1)
    assert set(per_draw.tolist()) == {0.0, 1.0}  # all-or-nothing per batch, both outcomes seen
    _assert_binomial(per_draw.sum().item(), draws, 0.7)


@pytest.mark.unit
def test_row_mode_drops_per_sample() -> None:
    torch.manual_seed(0)
    block, x, draws = _Residual(DropPath(0.3)).train(), torch.randn(16, 4), 200
    branch = block.branch(x).detach()
    with torch.no_grad():
        deltas = torch.stack([block(x) - x for _ in range(draws)])  # timm rescales kept samples by 1/p
    kept = torch.isclose(deltas, branch / 0.7, atol=1e-5).all(dim=2)
    assert ((deltas == 0).all(dim=2) | kept).all()
    per_draw = kept.float().mean(dim=1)
    assert ((per_draw > 0) & (per_draw < 1)).any()  # some batches are part kept, part dropped
    _assert_binomial(kept.sum().item(), draws * 16, 0.7)


@pytest.mark.unit
def test_batch_mode_in_eval_scales_the_branch_by_its_survival_prob() -> None:
    torch.manual_seed(0)
    block, x = _Residual(BatchDropPath(survival_prob=0.6)).eval(), torch.randn(5, 4)
    expected = x + 0.6 * (x @ block.branch.weight.T + block.branch.bias)  # Eq. 5
    assert torch.allclose(block(x), expected)
    assert torch.allclose(block(x), block(x))  # deterministic


@pytest.mark.unit
def test_linear_decay_matches_the_closed_form() -> None:
    for num_blocks, final in ((54, 0.5), (8, 0.8), (1, 0.5)):
        expected = [1 - (block / num_blocks) * (1 - final) for block in range(1, num_blocks + 1)]
        assert survival_probs(num_blocks, final) == pytest.approx(expected)
    assert survival_probs(4, 0.5) == pytest.approx([0.875, 0.75, 0.625, 0.5])
    with pytest.raises(ConfigError, match="final_survival_prob"):
        survival_probs(4, 1.5)


def _resnet18_with_drop_path(**kwargs) -> nn.Module:
    return create_model("resnet18", num_classes=10, drop_path_rate=0.5, **kwargs)


@pytest.mark.unit
def test_swapping_a_catalogue_model_replaces_every_drop_path_and_keeps_rates_then_trains() -> None:
    torch.manual_seed(0)
    model = _resnet18_with_drop_path()
    timm_rates = [m.drop_prob for m in drop_path_modules(model)]
    assert len(timm_rates) == 7  # timm gives block 0 of 8 rate 0, and so no DropPath
    set_drop_path_mode(model, "batch")
    modules = drop_path_modules(model)
    assert all(isinstance(m, BatchDropPath) for m in modules)
    assert not any(isinstance(m, DropPath) for m in model.modules())
    assert [m.survival_prob for m in modules] == pytest.approx([1 - r for r in timm_rates])

    assert apply_linear_decay(model, 0.5) == pytest.approx(survival_probs(7, 0.5))
    # the paper's numbering, with the first block (no module) counted
    assert apply_linear_decay(model, 0.5, num_blocks=8) == pytest.approx(survival_probs(8, 0.5)[1:])
    assert [m.survival_prob for m in drop_path_modules(model)] == pytest.approx(survival_probs(8, 0.5)[1:])

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    set_drop_path_mode(model, "row")  # and back
    assert all(type(m) is DropPath for m in drop_path_modules(model)) and len(drop_path_modules(model)) == 7


@pytest.mark.unit
def test_set_drop_path_rate_follows_the_linear_rule_on_both_kinds() -> None:
    for mode in ("row", "batch"):
        model = set_drop_path_mode(_resnet18_with_drop_path(), mode)
        rates = set_drop_path_rate(model, 0.2)
        assert rates == pytest.approx([0.2 * block / 7 for block in range(1, 8)])
        assert [m.drop_prob for m in drop_path_modules(model)] == pytest.approx(rates)


def _trainer_at(step: int, total: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, estimated_stepping_batches=total)


@pytest.mark.unit
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_scheduled_drop_path_rises_linearly_with_progress(mode: str) -> None:
    model = set_drop_path_mode(_resnet18_with_drop_path(), mode)
    built = [m.drop_prob for m in drop_path_modules(model)]
    # final_rate None: each block's rate as built, times progress
    callback = ScheduledDropPath()
    callback.on_fit_start(_trainer_at(0, 100), model)
    for step, progress in ((0, 0.0), (50, 0.5), (100, 1.0)):
        callback.on_train_batch_start(_trainer_at(step, 100), model, None, 0)
        assert [m.drop_prob for m in drop_path_modules(model)] == pytest.approx([r * progress for r in built])
        assert callback.rate == pytest.approx(0.5 * progress)
    # a final rate: the deepest block's rate is final_rate x progress, the others by the linear rule
    callback = ScheduledDropPath(final_rate=0.3)
    callback.on_fit_start(_trainer_at(0, 10), model)
    for step, progress in ((0, 0.0), (5, 0.5), (10, 1.0)):
        callback.on_train_batch_start(_trainer_at(step, 10), model, None, 0)
        assert callback.rate == pytest.approx(0.3 * progress)
        assert drop_path_modules(model)[-1].drop_prob == pytest.approx(0.3 * progress)
        assert drop_path_modules(model)[0].drop_prob == pytest.approx(0.3 * progress / 7)


@pytest.mark.unit
def test_scheduled_drop_path_needs_drop_path_modules() -> None:
    with pytest.raises(ConfigError, match="drop_path_rate"):
        ScheduledDropPath().on_fit_start(_trainer_at(0, 10), create_model("resnet18", num_classes=10))
    with pytest.raises(ConfigError, match="final_rate"):
        ScheduledDropPath(final_rate=2.0)


@pytest.mark.unit
def test_drop_path_mode_from_the_config(tiny_cfg) -> None:
    model = build_model(tiny_cfg("model.drop_path_rate=0.5", "model.drop_path_mode=batch"), num_classes=10)
    # all 8 blocks, the first included (timm builds none there; the paper's rule drops it too)
    assert [m.survival_prob for m in drop_path_modules(model)] == pytest.approx(survival_probs(8, 0.5))
    model = build_model(tiny_cfg("model.drop_path_rate=0.5"), num_classes=10)  # row: timm's, unchanged
    assert all(type(m) is DropPath for m in drop_path_modules(model))
    assert drop_path_modules(model)[-1].drop_prob == pytest.approx(0.5)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["model.drop_path_mode=sample"], ["drop_path_mode", "sample", "row", "batch"]),
        (["model.drop_path_mode=batch"], ["drop_path_mode=batch", "drop_path_rate"]),
    ],
)
def test_bad_drop_path_mode_is_one_line(tiny_cfg, overrides: list[str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        build_model(tiny_cfg(*overrides), num_classes=10)
    _assert_one_line_naming(exc, *names)


@pytest.mark.integration
def test_scheduled_drop_path_option_trains(tiny_cfg) -> None:
    cfg = tiny_cfg(
        "callbacks=scheduled_drop_path", "model.drop_path_rate=0.4", "model.drop_path_mode=batch", "data.batch_size=8"
    )
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    model = build_model(cfg, num_classes=len(datamodule.classes))
    callback = instantiate(cfg.callbacks.scheduled_drop_path)
    trainer = build_trainer(
        cfg, callbacks=[callback], limit_train_batches=2, limit_val_batches=0, logger=False, enable_checkpointing=False
    )
    trainer.fit(build_module(cfg, model, datamodule.classes), datamodule=datamodule)
    # set at the start of the second of 2 batches: 1 step done of 2
    assert callback.rate == pytest.approx(0.4 / 2)
    assert drop_path_modules(model)[-1].drop_prob == pytest.approx(0.4 / 2)


# Auxiliary heads: timm's Inception v3 with aux_logits=True


@pytest.mark.unit
def test_inception_v3_aux_head_in_training_only_and_weighted_loss(tiny_cfg) -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg("model=timm/inception_v3", "+model.kwargs.aux_logits=true", "loss.aux_weights=[0.4]")
    model = build_model(cfg, num_classes=10)
    module = ClassificationModule(
        model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), num_classes=10, aux_weights=list(cfg.loss.aux_weights)
    )
    x, y = torch.randn(2, 3, 299, 299), torch.tensor([1, 7])  # the aux head needs 17x17 maps: 299 px
    with torch.no_grad():
        outputs = model.train()(x)
    assert isinstance(outputs, tuple) and len(outputs) == 2
    main, aux = outputs
    assert main.shape == aux.shape == (2, 10)
    assert torch.allclose(module.loss(outputs, y), F.cross_entropy(main, y) + 0.4 * F.cross_entropy(aux, y))
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 75, 75))  # eval skips the aux head: timm's small resolution works
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)


# Bad input: one line naming the thing


def _assert_one_line_naming(exc: pytest.ExceptionInfo, *names: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for name in names:
        assert name in message, (name, message)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "kwargs", "named"),
    [
        ("resnet18", {"bogus": 1}, ["resnet18", "bogus", "drop_path_rate", "features_only"]),
        ("resnet18", {"bogus": None}, ["bogus"]),  # timm drops None values silently
        ("alexnet", {"drop_path_rate": 0.1}, ["alexnet", "drop_path_rate", "groups", "drop_rate"]),
        ("timm/regnetx_002", {"bogus": 1}, ["regnetx_002", "bogus", "drop_path_rate", "wa"]),  # RegNet takes **kwargs
    ],
)
def test_unknown_kwarg_names_the_accepted_ones(name: str, kwargs: dict, named: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        create_model(name, num_classes=10, **kwargs)
    _assert_one_line_naming(exc, *named)


@pytest.mark.unit
def test_accepted_kwargs_still_build() -> None:
    assert create_model("timm/regnetx_002", num_classes=10, wa=30.0).num_classes == 10  # a cfg field via **kwargs
    assert create_model("alexnet", num_classes=10, groups=1, drop_rate=0.0).num_classes == 10
    features = create_model("resnet18", features_only=True, out_indices=(1, 2))
    assert len(features(torch.randn(1, 3, 32, 32))) == 2


@pytest.mark.unit
def test_unknown_kwarg_from_the_config_is_one_line(tiny_cfg) -> None:
    with pytest.raises(ConfigError) as exc:
        build_model(tiny_cfg("+model.kwargs.bogus=1"), num_classes=10)
    _assert_one_line_naming(exc, "resnet18", "bogus", "accepts")


@pytest.mark.unit
def test_resolution_below_the_minimum_fails_before_training(tiny_cfg) -> None:
    cfg = tiny_cfg("model=alexnet", "data.resolution=32")
    build_datamodule(cfg)
    with pytest.raises(ConfigError) as exc:
        build_model(cfg, num_classes=10)
    _assert_one_line_naming(exc, "alexnet", "63", "32")


@pytest.mark.unit
def test_resolution_below_the_minimum_fails_at_the_first_forward() -> None:
    model = create_model("alexnet", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 63, 63)).shape == (1, 10)
        with pytest.raises(ConfigError) as exc:
            model(torch.randn(1, 3, 62, 62))
    _assert_one_line_naming(exc, "alexnet", "63", "62x62")
