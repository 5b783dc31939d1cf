"""FractalNet is the paper's network (Larsson et al. 2017, arXiv:1605.07648): the expansion rule with mean joins
(Sec. 2), the layer counts of Sec. 4 / 4.3, drop-path as Sec. 3.1 describes it (local, global, mixed per mini-batch,
drawn on the host), single-column evaluation, the feature pyramid and one-line errors for bad arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from trainer.errors import ConfigError
from trainer.models import create_model, get_entry
from trainer.models.complexity import count_macs, meta_model
from trainer.models.fractal_blocks import FractalBlock, PathChoice, join
from trainer.models.fractalnet import FractalNet

CIFAR_NAMES = ("fractalnet20_cifar", "fractalnet40_cifar")


def _tiny(**kwargs) -> FractalNet:
    """A CIFAR-style FractalNet small enough to run many times on the CPU: B=2 blocks of 3 columns."""
    torch.manual_seed(0)
    args = dict(num_classes=3, channels=(4, 6), num_columns=3, stem=False, final_pool=False)
    return FractalNet(**{**args, **kwargs})


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def _blocks(model: nn.Module) -> list[FractalBlock]:
    return [m for m in model.modules() if isinstance(m, FractalBlock)]


def _assert_one_line_naming(exc: pytest.ExceptionInfo, text: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and text in message, message


# --- structure ------------------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("num_columns", [1, 2, 3, 4])
def test_columns_and_block_depth(num_columns: int) -> None:
    block = FractalBlock(4, 4, num_columns, PathChoice())
    assert [len(column) for column in block.columns] == [2**k for k in range(num_columns)]  # column k: 2^(k-1)
    assert len(_convs(block)) == 2**num_columns - 1
    assert len(block.schedule) == 2 ** (num_columns - 1)  # the deepest column's depth
    assert block.schedule[-1] == [(k, 2**k - 1) for k in range(num_columns)]  # all columns meet at the end


@pytest.mark.unit
@pytest.mark.parametrize(("name", "blocks", "columns", "depth"), [
    ("fractalnet20_cifar", 5, 3, 20),
    ("fractalnet40_cifar", 5, 4, 40),
    ("fractalnet34", 4, 4, 34),
])  # fmt: skip
def test_layer_counts_are_the_papers(name: str, blocks: int, columns: int, depth: int) -> None:
    """CIFAR: B * 2^(C-1) convolutions on the deepest path (Sec. 4); FractalNet-34: ResNet-34's first conv and
    classifier around 4 blocks of 8 layers (Sec. 4.3)."""
    model = meta_model(name)
    found = _blocks(model)
    assert len(found) == blocks and {b.num_columns for b in found} == {columns}
    deepest = sum(len(block.columns[-1]) for block in found)
    assert deepest == blocks * 2 ** (columns - 1)
    stem_convs = len(_convs(model.stem))
    assert stem_convs == (1 if name == "fractalnet34" else 0)
    assert len(_convs(model)) == stem_convs + blocks * (2**columns - 1)
    if name == "fractalnet34":
        assert stem_convs + deepest + 1 == depth  # ResNet-34's counting: first conv, 32 fractal layers, classifier
    else:
        assert deepest == depth  # the CIFAR depths count convolutions only


@pytest.mark.unit
def test_channels_per_block() -> None:
    cifar = meta_model("fractalnet20_cifar")
    assert [b.columns[0][0].conv.out_channels for b in _blocks(cifar)] == [64, 128, 256, 512, 512]
    imagenet = meta_model("fractalnet34")
    assert [b.columns[0][0].conv.out_channels for b in _blocks(imagenet)] == [64, 128, 256, 512]
    assert imagenet.stem.conv.kernel_size == (7, 7) and imagenet.stem.conv.stride == (2, 2)  # ResNet-34's stem
    assert isinstance(imagenet.stem.pool, nn.MaxPool2d)
    pools = [stage.pool for stage in imagenet.stages[1:]]
    assert all(isinstance(p, nn.MaxPool2d) and p.kernel_size == 2 and p.stride == 2 for p in pools)


def _fractalnet34_params(num_classes: int = 1000) -> int:
    """By hand: in each block the first convolution of each of the 4 columns changes the width, 11 keep it."""
    widths, params, in_chs = (64, 128, 256, 512), 3 * 64 * 7 * 7 + 2 * 64, 64
    for out_chs in widths:
        params += 4 * (in_chs * out_chs * 9 + 2 * out_chs) + 11 * (out_chs * out_chs * 9 + 2 * out_chs)
        in_chs = out_chs
    return params + 512 * num_classes + num_classes


def _fractalnet34_macs() -> int:
    """By hand at 224 px: the stem at 112x112, blocks at 56, 28, 14, 7 px, the classifier."""
    macs, in_chs = 3 * 64 * 49 * 112 * 112, 64
    for out_chs, size in zip((64, 128, 256, 512), (56, 28, 14, 7), strict=True):
        macs += (4 * in_chs * out_chs + 11 * out_chs * out_chs) * 9 * size * size
        in_chs = out_chs
    return macs + 512 * 1000


@pytest.mark.unit
def test_fractalnet34_params_and_macs_by_hand() -> None:
    model = meta_model("fractalnet34")
    assert sum(p.numel() for p in model.parameters()) == _fractalnet34_params() == get_entry("fractalnet34").params
    assert count_macs(model, 224) == _fractalnet34_macs() == 6_361_223_168


@pytest.mark.unit
def test_cifar_head_pools_after_the_last_block() -> None:
    model = meta_model("fractalnet20_cifar")
    assert isinstance(model.final_pool, nn.MaxPool2d)  # Sec. 4: a 2x2 max-pool after every block, 32 -> 1 px
    features, blocks = model.forward_intermediates(torch.empty(1, 3, 32, 32, device="meta"))
    assert blocks[-1].shape == (1, 512, 2, 2) and features.shape == (1, 512, 1, 1)  # the pool ends the trunk


# --- join and the expansion rule --------------------------------------------------------------------------------


@pytest.mark.unit
def test_join_is_the_element_wise_mean() -> None:
    a, b, c = torch.randn(3, 2, 4, 5, 5).unbind(0)
    torch.testing.assert_close(join([a, b, c]), (a + b + c) / 3)
    torch.testing.assert_close(join([a, b]), (a + b) / 2)
    assert join([a]) is a
    torch.testing.assert_close(join([a, b, c], [0.5, 0.0, 0.5]), (a + c) / 2)


def _expansion_rule(columns: list[list[nn.Module]], z: torch.Tensor) -> list[torch.Tensor]:
    """f_1(z) = conv(z); f_{C+1}(z) = join(f_C(f_C(z)), conv(z)) (Sec. 2), as the list of the final join's inputs.
    The new conv(z) is the shallowest column; the two copies of f_C take the first and second halves of the deeper
    columns' convolutions. Joins that meet (the inner f_C's last join and the outer one) merge into one."""
    if len(columns) == 1:
        return [columns[0][0](z)]
    first = [column[: len(column) // 2] for column in columns[1:]]
    second = [column[len(column) // 2 :] for column in columns[1:]]
    inner = join(_expansion_rule(first, z))
    return [*_expansion_rule(second, inner), columns[0][0](z)]


@pytest.mark.unit
@pytest.mark.parametrize("num_columns", [1, 2, 3, 4])
def test_block_follows_the_expansion_rule(num_columns: int) -> None:
    torch.manual_seed(0)
    block = FractalBlock(3, 5, num_columns, PathChoice()).eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        expected = join(_expansion_rule([list(column) for column in block.columns], x))
        torch.testing.assert_close(block(x), expected)


# --- drop-path (Sec. 3.1) ---------------------------------------------------------------------------------------


@pytest.mark.unit
def test_local_drop_path_keeps_at_least_one_input() -> None:
    paths = PathChoice(local_drop_rate=0.99, generator=torch.Generator().manual_seed(0))
    block = FractalBlock(2, 2, 3, paths).train()
    for _ in range(500):
        weights = block.join_weights([1, 2, 3])
        kept = [w for w in weights if w > 0]
        assert len(kept) >= 1 and sum(weights) == pytest.approx(1.0)
        assert all(w == pytest.approx(1 / len(kept)) for w in kept)  # the mean of the kept inputs


@pytest.mark.unit
def test_local_drop_rate_is_respected() -> None:
    paths = PathChoice(local_drop_rate=0.15, generator=torch.Generator().manual_seed(1))
    block = FractalBlock(2, 2, 3, paths).train()
    draws = [w == 0 for _ in range(3000) for w in block.join_weights([1, 2, 3])]
    assert sum(draws) / len(draws) == pytest.approx(0.15, abs=0.02)  # 5 sigma over 9000 inputs
    assert block.eval().join_weights([1, 2, 3]) is None  # eval mode: the plain mean


@pytest.mark.unit
def test_mixing_ratio_with_a_seeded_generator() -> None:
    """One draw per mini-batch, on the host: global with probability global_drop_ratio, a uniform column."""
    model = _tiny(num_columns=4, global_drop_ratio=0.5, drop_path_rate=0.15).train()
    model.drop_path_generator = torch.Generator().manual_seed(0)
    x = torch.empty(2, 3, 8, 8)
    plans = []
    for _ in range(4000):
        model.path_sampler(x)
        plans.append((model.paths.global_column, model.paths.local_drop_rate))
    global_columns = [column for column, _ in plans if column is not None]
    assert len(global_columns) / len(plans) == pytest.approx(0.5, abs=0.04)
    assert all(rate == 0.15 for column, rate in plans if column is None)
    assert all(rate == 0.0 for column, rate in plans if column is not None)
    counts = [global_columns.count(k) for k in (1, 2, 3, 4)]
    assert all(abs(c - len(global_columns) / 4) < 100 for c in counts), counts
    # the same seed gives the same plans; eval mode draws nothing
    model.drop_path_generator = torch.Generator().manual_seed(0)
    again = []
    for _ in range(50):
        model.path_sampler(x)
        again.append((model.paths.global_column, model.paths.local_drop_rate))
    assert again == plans[:50]
    model.eval().path_sampler(x)
    assert (model.paths.global_column, model.paths.local_drop_rate) == (None, 0.0)


@pytest.mark.unit
@pytest.mark.parametrize("column", [1, 2, 3])
def test_global_drop_path_keeps_one_column_through_the_network(column: int) -> None:
    model = _tiny(global_drop_ratio=1.0, drop_path_rate=0.0).train()
    generator = model.drop_path_generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    while True:  # find the seed state at which the sampler picks `column`, then run the network from it
        state = generator.get_state()
        model.path_sampler(x)
        if model.paths.global_column == column:
            break
    generator.set_state(state)
    out = model(x)
    assert model.paths.global_column == column
    out.sum().backward()
    for block in _blocks(model):
        for k, col in enumerate(block.columns, start=1):
            for conv in _convs(col):
                grad = conv.weight.grad
                assert grad is not None  # dropped paths are multiplied by zero: every parameter gets a gradient
                assert bool(grad.abs().sum() > 0) is (k == column), (k, column)
    # the same as running that column alone (training-mode BN: batch statistics either way)
    with torch.no_grad():
        y = x
        for stage in model.stages:
            y = stage.pool(y) if hasattr(stage, "pool") else y
            y = stage.block.columns[column - 1](y)
        torch.testing.assert_close(out.detach(), model.forward_head(y))


# --- single-column evaluation -------------------------------------------------------------------------------------


def _executed_convs(model: nn.Module, x: torch.Tensor) -> int:
    ran = []
    hooks = [conv.register_forward_hook(lambda *_: ran.append(1)) for conv in _convs(model)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return len(ran)


@pytest.mark.unit
def test_eval_column_runs_only_that_column() -> None:
    model = _tiny(num_columns=4).eval()
    x = torch.randn(1, 3, 8, 8)
    assert _executed_convs(model, x) == 2 * (2**4 - 1)  # the whole network
    for k in (1, 2, 3, 4):
        model.eval_column = k
        assert _executed_convs(model, x) == 2 * 2 ** (k - 1)  # B * 2^(k-1)
    model.eval_column = None
    assert _executed_convs(model, x) == 2 * 15
    model.eval_column = 2
    assert _executed_convs(model.train(), x) == 2 * 15, "training always runs the whole fractal (drop-path)"


@pytest.mark.unit
def test_eval_column_from_the_constructor_and_features_only() -> None:
    model = create_model("fractalnet34", eval_column=4)
    assert model.eval_column == 4 and all(b.paths.eval_column == 4 for b in _blocks(model))
    with torch.device("meta"):
        features = create_model("fractalnet20_cifar", features_only=True, eval_column=3)
    assert {b.paths.eval_column for b in _blocks(features)} == {3}


@pytest.mark.unit
def test_deepest_column_is_a_plain_deep_net() -> None:
    """eval_column=C in eval mode is the chain of the deepest column's convolutions, block after block."""
    model = _tiny(eval_column=3).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        y = model.stages[0].block.columns[2](x)
        y = model.stages[1].block.columns[2](model.stages[1].pool(y))
        torch.testing.assert_close(model(x), model.forward_head(y))


# --- dropout, features, errors ----------------------------------------------------------------------------------


@pytest.mark.unit
def test_dropout_per_block() -> None:
    model = meta_model("fractalnet20_cifar", drop_rate=0.4)
    assert model.block_drop_rates == pytest.approx((0.0, 0.1, 0.2, 0.3, 0.4))  # Sec. 4
    for block, rate in zip(_blocks(model), (0.0, 0.1, 0.2, 0.3, 0.4), strict=True):
        drops = [m.p for m in block.modules() if isinstance(m, nn.Dropout)]
        assert drops == ([] if rate == 0 else [pytest.approx(rate)] * 7)  # one per convolution
    model = meta_model("fractalnet34", block_drop_rates=(0.1, 0.0, 0.0, 0.2))
    assert model.block_drop_rates == (0.1, 0.0, 0.0, 0.2)


@pytest.mark.unit
@pytest.mark.parametrize(("name", "channels", "reductions", "sizes"), [
    ("fractalnet34", [64, 128, 256, 512], [4, 8, 16, 32], [56, 28, 14, 7]),
    ("fractalnet20_cifar", [64, 128, 256, 512, 512], [1, 2, 4, 8, 16], [32, 16, 8, 4, 2]),
])  # fmt: skip
def test_features_only_one_level_per_block(name: str, channels: list, reductions: list, sizes: list) -> None:
    with torch.device("meta"):
        model = create_model(name, features_only=True)
    assert model.feature_info.channels() == channels and model.feature_info.reduction() == reductions
    resolution = get_entry(name).resolution
    maps = model(torch.empty(1, 3, resolution, resolution, device="meta"))
    assert [m.shape[-1] for m in maps] == sizes
    assert any(name == "path_sampler" for name, _ in model.named_children()), "the feature net draws drop-path too"


@pytest.mark.unit
@pytest.mark.parametrize(("kwargs", "text"), [
    (dict(num_columns=0), "num_columns=0"),
    (dict(channels=()), "channels=()"),
    (dict(eval_column=0), "eval_column=0"),
    (dict(eval_column=5), "eval_column=5"),
    (dict(drop_path_rate=1.0), "drop_path_rate=1.0"),
    (dict(drop_path_rate=-0.1), "drop_path_rate=-0.1"),
    (dict(drop_rate=1.5), "drop_rate=1.5"),
    (dict(global_drop_ratio=1.5), "global_drop_ratio=1.5"),
    (dict(block_drop_rates=(0.1, 0.2)), "block_drop_rates=(0.1, 0.2)"),
    (dict(block_drop_rates=(0.1, 0.2, 0.3, 1.0)), "block_drop_rates=1.0"),
])  # fmt: skip
def test_bad_arguments_fail_in_one_line(kwargs: dict, text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        FractalNet(**kwargs)
    _assert_one_line_naming(exc, text)
    with pytest.raises(ConfigError) as exc:
        create_model("fractalnet34", **kwargs)
    _assert_one_line_naming(exc, text)


@pytest.mark.unit
def test_eval_column_attribute_is_checked() -> None:
    model = _tiny()
    with pytest.raises(ConfigError) as exc:
        model.eval_column = 4
    _assert_one_line_naming(exc, "eval_column=4")
    assert model.eval_column is None


@pytest.mark.unit
@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_cifar_metadata(name: str) -> None:
    entry = get_entry(name)
    assert (entry.resolution, entry.min_resolution, entry.crop_ratio) == (32, 32, 1.0)
    assert entry.family == "fractalnet" and entry.recipe == "fractalnet_cifar"  # recipes/fractalnet_cifar.yaml
    model = meta_model(name, num_classes=100, in_chans=1)
    assert model(torch.empty(2, 1, 32, 32, device="meta")).shape == (2, 100)


@pytest.mark.unit
def test_fractalnet34_metadata() -> None:
    entry = get_entry("fractalnet34")
    assert (entry.resolution, entry.crop_ratio) == (224, 0.875)
    assert (entry.top1, entry.top5) == pytest.approx((100 - 24.12, 100 - 7.39))  # Table 2, 10-crop errors
