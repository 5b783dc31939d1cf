"""BN-Inception as in the Appendix (Figure 5) of Ioffe & Szegedy 2015."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn

from trainer.errors import ConfigError
from trainer.models import create_model, get_entry
from trainer.models.bn_inception import SeparableConvBlock
from trainer.models.complexity import count_macs, meta_model
from trainer.models.layers import LocalResponseNorm

# Figure 5, typed from the paper: module -> (input channels, output size at 224, #1x1, #3x3 reduce, #3x3,
# double #3x3 reduce, double #3x3, pool, proj (0: pass through), stride). Input channels and output sizes follow
# from the branch columns: 4c and 4d give 608 maps (the table's output column says 576), 4e 1056 (it says 1024).
FIGURE5 = {
    "3a": (192, 28, 64, 64, 64, 64, 96, "avg", 32, 1),
    "3b": (256, 28, 64, 64, 96, 64, 96, "avg", 64, 1),
    "3c": (320, 14, 0, 128, 160, 64, 96, "max", 0, 2),
    "4a": (576, 14, 224, 64, 96, 96, 128, "avg", 128, 1),
    "4b": (576, 14, 192, 96, 128, 96, 128, "avg", 128, 1),
    "4c": (576, 14, 160, 128, 160, 128, 160, "avg", 128, 1),
    "4d": (608, 14, 96, 128, 192, 160, 192, "avg", 128, 1),
    "4e": (608, 7, 0, 128, 192, 192, 256, "max", 0, 2),
    "5a": (1056, 7, 352, 192, 320, 160, 224, "avg", 128, 1),
    "5b": (1024, 7, 352, 192, 320, 192, 224, "max", 128, 1),
}


def _out_chs(row: tuple) -> int:
    cin, _, c1, _, c3, _, d3, _, proj, _ = row
    return c1 + c3 + d3 + (proj or cin)


def _convs(row: tuple) -> list[tuple[int, int, int, int]]:
    """(in, out, kernel, stride) of a module's convolutions, in branch order."""
    cin, _, c1, r3, c3, rd, d3, _, proj, stride = row
    convs = [(cin, c1, 1, 1)] if c1 else []
    convs += [(cin, r3, 1, 1), (r3, c3, 3, stride), (cin, rd, 1, 1), (rd, d3, 3, 1), (d3, d3, 3, stride)]
    return convs + ([(cin, proj, 1, 1)] if proj else [])


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return meta_model("bn_inception")


@pytest.mark.unit
def test_figure5_modules(net: nn.Module) -> None:
    chs = 192
    for name, row in FIGURE5.items():
        assert row[0] == chs, name
        block = net.get_submodule(f"inception{name}")
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        assert [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]) for m in convs] == _convs(row), name
        pool = next(m for m in block.modules() if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)))
        assert isinstance(pool, nn.MaxPool2d if row[7] == "max" else nn.AvgPool2d), name
        assert (pool.kernel_size, pool.stride) == (3, row[-1]), name
        chs = _out_chs(row)
    assert chs == net.num_features == 1024
    assert [_out_chs(row) for row in FIGURE5.values()] == [256, 320, 576, 576, 576, 608, 608, 1056, 1024, 1024]


@pytest.mark.unit
def test_output_sizes_at_224(net: nn.Module) -> None:
    shapes: dict[str, tuple[int, ...]] = {}
    names = ["conv1", "maxpool1", "conv3", "maxpool2", *(f"inception{n}" for n in FIGURE5), "global_pool"]
    hooks = [
        net.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, key=n: shapes.__setitem__(key, tuple(out.shape[1:]))
        )
        for n in names
    ]
    try:
        net(torch.empty(1, 3, 224, 224, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    expected = {"conv1": (64, 112, 112), "maxpool1": (64, 56, 56), "conv3": (192, 56, 56), "maxpool2": (192, 28, 28)}
    expected |= {f"inception{n}": (_out_chs(row), row[1], row[1]) for n, row in FIGURE5.items()}
    assert shapes == expected | {"global_pool": (1024,)}  # timm's pooling flattens


@pytest.mark.unit
def test_batch_norm_after_every_conv_no_bias_no_lrn_no_5x5(net: nn.Module) -> None:
    """Sec. 4.2: BN before each nonlinearity (Sec. 3.2: so no conv bias); Sec. 4.2.1: no LRN; Appendix: the 5x5
    convolutions become two 3x3; the classifier is the only fully-connected layer; no dropout by default."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == len(convs) - 1  # the separable conv1 is two convolutions with one BN after
    assert all(m.bias is None for m in convs)
    assert {m.eps for m in norms} == {0.001}
    assert not any(isinstance(m, (LocalResponseNorm, nn.LocalResponseNorm)) for m in net.modules())
    assert {m.kernel_size[0] for m in convs} == {1, 3, 7}
    assert [m for m in net.modules() if isinstance(m, nn.Linear)] == [net.fc]
    assert net.head_drop.p == 0.0


@pytest.mark.unit
def test_separable_first_convolution(net: nn.Module) -> None:
    """Appendix: "separable convolution with depth multiplier 8 on the first convolutional layer"."""
    assert isinstance(net.conv1, SeparableConvBlock)
    depthwise, pointwise = net.conv1.conv, net.conv1.conv_pw
    assert (depthwise.in_channels, depthwise.out_channels, depthwise.groups) == (3, 24, 3)
    assert (depthwise.kernel_size, depthwise.stride, depthwise.padding) == ((7, 7), (2, 2), (3, 3))
    assert (pointwise.in_channels, pointwise.out_channels, pointwise.kernel_size) == (24, 64, (1, 1))
    plain = meta_model("bn_inception", separable_stem=False)
    assert plain.conv1.conv.kernel_size == (7, 7) and plain.conv1.conv.groups == 1
    count = sum(p.numel() for p in net.parameters())
    assert sum(p.numel() for p in plain.parameters()) - count == 7 * 7 * 3 * 64 - (7 * 7 * 3 * 8 + 24 * 64)


@pytest.mark.unit
def test_params_are_figure5_counted_by_hand(net: nn.Module) -> None:
    """The table's weights, BN's scale and shift per channel, the 1000-way classifier: 11,278,528. The paper's text
    (Sec. 4.2) says 13.6 M, which its table does not give (see the module docstring)."""
    weights = 7 * 7 * 3 * 8 + 24 * 64 + 64 * 64 + 9 * 64 * 192
    norm_channels = 64 + 64 + 192
    for row in FIGURE5.values():
        convs = _convs(row)
        weights += sum(cin * cout * k * k for cin, cout, k, _ in convs)
        norm_channels += sum(cout for _, cout, _, _ in convs)
    hand = weights + 2 * norm_channels + 1024 * 1000 + 1000
    assert sum(p.numel() for p in net.parameters()) == hand == get_entry("bn_inception").params == 11_278_528
    assert abs(hand / 13.6e6 - 1) > 0.15


@pytest.mark.unit
def test_mult_adds_are_30_percent_above_googlenet(net: nn.Module) -> None:
    """Appendix: the double 3x3 branches raise the computational cost "by about 30%" over GoogLeNet's 1.5 billion
    multiply-adds (GoogLeNet, Sec. 5)."""
    macs = count_macs(net, 224)
    assert macs == pytest.approx(1.949e9, rel=0.001)
    assert macs / 1.5e9 == pytest.approx(1.30, abs=0.01)


@pytest.mark.unit
@pytest.mark.parametrize("resolution", [97, 225, 161])
def test_stride2_modules_run_at_odd_sizes(net: nn.Module, resolution: int) -> None:
    """The stride-2 modules' conv branches and pass-through pool agree at any size (both ceil(n / 2))."""
    out = net.forward_features(torch.empty(1, 3, resolution, resolution, device="meta"))
    size = resolution
    for _ in range(5):
        size = -(-size // 2)
    assert tuple(out.shape[1:]) == (1024, size, size)


@pytest.mark.unit
def test_feature_pyramid() -> None:
    with torch.device("meta"):
        model = timm.create_model("bn_inception", features_only=True)
    assert model.feature_info.channels() == [64, 192, 320, 608, 1024]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    maps = model(torch.empty(1, 3, 224, 224, device="meta"))
    assert [tuple(m.shape[1:]) for m in maps] == [
        (64, 112, 112),
        (192, 56, 56),
        (320, 28, 28),
        (608, 14, 14),
        (1024, 7, 7),
    ]


@pytest.mark.unit
def test_no_aux_heads_and_head() -> None:
    torch.manual_seed(0)
    model = create_model("bn_inception", num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model.train()(x).shape == (2, 10)  # no auxiliary outputs in training either
        model.eval()
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 1024)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)


@pytest.mark.unit
def test_paper_accuracy_entry() -> None:
    entry = get_entry("bn_inception")
    assert (entry.top1, entry.top5) == (pytest.approx(100 - 25.2), pytest.approx(100 - 7.82))
    assert (entry.family, entry.recipe, entry.resolution) == ("bn_inception", "bn_inception", 224)


@pytest.mark.unit
def test_bad_drop_rate_raises_one_line() -> None:
    with pytest.raises(ConfigError) as exc:
        timm.create_model("bn_inception", drop_rate=1.5)
    assert str(exc.value) == "bn_inception: drop_rate=1.5 is outside [0, 1)"
