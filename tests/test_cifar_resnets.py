"""The CIFAR networks of the depth/width papers: pre-activation ResNet-164/1001 (He et al. 2016b) and WRN-28-10 /
WRN-40-4 (Zagoruyko & Komodakis 2016). Depth as each paper counts it, stage widths and map sizes, parameter counts
against the papers' tables and a hand count, the pre-activation unit order, where the dropout sits, drop-path, and
bad arguments."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.errors import ConfigError
from trainer.models import create_model, data_defaults, get_entry
from trainer.models.complexity import meta_model
from trainer.models.preact_resnet import CIFAR10_MEAN, CIFAR10_STD, PreActBottleneck, PreActResNetCifar
from trainer.models.preact_resnet import CIFAR_ERROR as PREACT_CIFAR_ERROR
from trainer.models.regularization import drop_path_modules
from trainer.models.wide_resnet import CIFAR_ERROR as WRN_CIFAR_ERROR
from trainer.models.wide_resnet import WideBasicBlock, WideResNetCifar

PREACT = {"preact_resnet164_cifar": 164, "preact_resnet1001_cifar": 1001}  # name: depth
WRN = {"wide_resnet28_10_cifar": (28, 10), "wide_resnet40_4_cifar": (40, 4)}  # name: (depth, widen factor)
# Parameters in millions as the papers print them (preact: Table 4; WRN: Tables 4-5), for 10 classes. They match
# the convolution and classifier weights: ResNet-1001 has 10.18 M of those and 10.33 M with its BN parameters.
PAPER_PARAMS_M = {
    "preact_resnet164_cifar": 1.7,
    "preact_resnet1001_cifar": 10.2,
    "wide_resnet28_10_cifar": 36.5,
    "wide_resnet40_4_cifar": 8.9,
}


def _units(model: nn.Module) -> list[nn.Module]:
    return [block for stage in model.stages for block in stage]


def _assert_one_line_naming(exc: pytest.ExceptionInfo, text: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and text in message, message


# --- depth, widths, map sizes -------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(("name", "depth"), PREACT.items())
def test_preact_depth_is_9n_plus_2(name: str, depth: int) -> None:
    """He et al. count the weighted layers on the main path: the stem, 3 per unit and the classifier, not the three
    1x1 projection shortcuts."""
    model = meta_model(name)
    n = (depth - 2) // 9
    assert [len(stage) for stage in model.stages] == [n, n, n]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    projections = [u.downsample for u in _units(model) if u.downsample is not None]
    assert projections == [stage[0].downsample for stage in model.stages]  # only where the shape changes
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) - len(projections) + len(linears) == depth


@pytest.mark.unit
@pytest.mark.parametrize(("name", "depth_k"), WRN.items())
def test_wrn_depth_is_6n_plus_4(name: str, depth_k: tuple[int, int]) -> None:
    """WRN-d-k has d convolutional layers in all: the stem, 2 per unit and the three 1x1 projections."""
    depth, _ = depth_k
    model = meta_model(name)
    n = (depth - 4) // 6
    assert [len(stage) for stage in model.stages] == [n, n, n]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(u.downsample is not None for u in _units(model)) == 3
    assert len(convs) == depth


@pytest.mark.unit
@pytest.mark.parametrize("name", PREACT)
def test_preact_widths(name: str) -> None:
    model = meta_model(name)
    assert (model.stem.in_channels, model.stem.out_channels, model.stem.kernel_size) == (3, 16, (3, 3))
    for stage, (width, bottleneck) in zip(model.stages, ((64, 16), (128, 32), (256, 64)), strict=True):
        for unit in stage:
            assert (unit.conv1.out_channels, unit.conv2.out_channels, unit.conv3.out_channels) == (
                bottleneck,
                bottleneck,
                width,
            )
    assert model.stages[0][0].conv1.in_channels == 16
    assert model.num_features == model.fc.in_features == 256


@pytest.mark.unit
@pytest.mark.parametrize(("name", "depth_k"), WRN.items())
def test_wrn_widths(name: str, depth_k: tuple[int, int]) -> None:
    _, k = depth_k
    model = meta_model(name)
    assert (model.stem.in_channels, model.stem.out_channels, model.stem.kernel_size) == (3, 16, (3, 3))
    for stage, width in zip(model.stages, (16 * k, 32 * k, 64 * k), strict=True):
        assert {(u.conv1.out_channels, u.conv2.out_channels) for u in stage} == {(width, width)}
    assert model.stages[0][0].conv1.in_channels == 16
    assert model.num_features == model.fc.in_features == 64 * k


@pytest.mark.unit
@pytest.mark.parametrize("name", ["preact_resnet164_cifar", *WRN])
def test_maps_are_32_16_8_at_32_px(name: str) -> None:
    """Three stages at 32, 16 and 8 px (no pooling in the stem), an 8x8 map into the pool (timm's pool_size)."""
    with torch.device("meta"):
        features = create_model(name, features_only=True)
        maps = features(torch.empty(1, 3, 32, 32))
    widths = [info["num_chs"] for info in features.feature_info.get_dicts()]
    assert [tuple(m.shape[1:]) for m in maps] == [(widths[0], 32, 32), (widths[1], 16, 16), (widths[2], 8, 8)]
    assert features.feature_info.reduction() == [1, 2, 4]
    model = meta_model(name)
    assert tuple(model.forward_features(torch.empty(1, 3, 32, 32, device="meta")).shape[2:]) == (8, 8)
    assert timm.models.get_pretrained_cfg(get_entry(name).builder).pool_size == (8, 8)


# --- parameters ---------------------------------------------------------------------------------------------------


def _preact_params(n: int, classes: int) -> int:
    """Counted by hand from the authors' code: bias-free convolutions, BN (2 per channel), the classifier."""
    total, in_chs = 3 * 16 * 9, 16
    for width in (64, 128, 256):
        mid = width // 4
        for unit in range(n):
            chs = in_chs if unit == 0 else width
            total += 2 * chs + chs * mid + 2 * mid + 9 * mid * mid + 2 * mid + mid * width
            total += chs * width if unit == 0 else 0  # projection shortcut
        in_chs = width
    return total + 2 * 256 + 256 * classes + classes


def _wrn_params(n: int, k: int, classes: int) -> int:
    total, in_chs = 3 * 16 * 9, 16
    for width in (16 * k, 32 * k, 64 * k):
        for unit in range(n):
            chs = in_chs if unit == 0 else width
            total += 2 * chs + 9 * chs * width + 2 * width + 9 * width * width
            total += chs * width if unit == 0 and chs != width else 0
        in_chs = width
    return total + 2 * 64 * k + 64 * k * classes + classes


@pytest.mark.unit
@pytest.mark.parametrize("name", [*PREACT, *WRN])
def test_params_are_the_papers(name: str) -> None:
    if name in PREACT:
        n = (PREACT[name] - 2) // 9
        hand = _preact_params(n, 1000), _preact_params(n, 10)
    else:
        depth, k = WRN[name]
        hand = _wrn_params((depth - 4) // 6, k, 1000), _wrn_params((depth - 4) // 6, k, 10)
    assert get_entry(name).params == hand[0]
    model = meta_model(name, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == hand[1]
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert round(weights / 1e6, 1) == PAPER_PARAMS_M[name]


@pytest.mark.unit
def test_wrn_28_10_is_the_common_count() -> None:
    """36,479,194 at 10 classes: the count every WRN-28-10 reimplementation with BN reports."""
    assert sum(p.numel() for p in meta_model("wide_resnet28_10_cifar", num_classes=10).parameters()) == 36_479_194


# --- unit order -----------------------------------------------------------------------------------------------------


def _call_order(unit: nn.Module, x: torch.Tensor) -> list[str]:
    names = {m: n for n, m in unit.named_modules() if n and not list(m.children())}
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _a: order.append(names[mod])) for m in names]
    try:
        unit(x)
    finally:
        for hook in hooks:
            hook.remove()
    return order


def _randomise_norms(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()


@pytest.mark.unit
def test_preact_unit_is_fig_4e() -> None:
    """BN-ReLU-conv1x1 -> BN-ReLU-conv3x3 -> BN-ReLU-conv1x1, nothing after the addition; a projection shortcut takes
    the pre-activated input, an identity shortcut the raw one (the authors' code)."""
    torch.manual_seed(0)
    model = PreActResNetCifar(depth=20, num_classes=10).eval()  # n = 2: a projection unit and an identity unit
    _randomise_norms(model)
    first, second = model.stages[1]
    assert isinstance(first, PreActBottleneck) and first.downsample is not None and second.downsample is None
    assert first.conv1.stride == (2, 2) and first.downsample.stride == (2, 2)  # the stride on the first 1x1
    branch = ["norm1", "act1", "conv1", "norm2", "act2", "conv2", "norm3", "act3", "conv3", "drop_path"]
    x = torch.randn(2, 64, 8, 8)
    assert _call_order(first, x) == ["norm1", "act1", "downsample", *branch[2:]]
    assert _call_order(second, first(x)) == branch
    assert isinstance(first.norm1, nn.BatchNorm2d)

    def by_the_paper(unit: PreActBottleneck, x: torch.Tensor) -> torch.Tensor:
        preact = F.relu(unit.norm1(x))
        out = unit.conv3(F.relu(unit.norm3(unit.conv2(F.relu(unit.norm2(unit.conv1(preact)))))))
        return out + (x if unit.downsample is None else unit.downsample(preact))

    with torch.no_grad():
        y = first(x)
        torch.testing.assert_close(y, by_the_paper(first, x))
        torch.testing.assert_close(second(y), by_the_paper(second, y))
        # the stem has no BN-ReLU of its own; the network ends with BN-ReLU before the pool
        images = torch.randn(2, 3, 32, 32)
        expected = F.relu(model.norm(model.stages(model.stem(images))))
        torch.testing.assert_close(model.forward_features(images), expected)


@pytest.mark.unit
def test_wrn_unit_and_dropout_position() -> None:
    """BN-ReLU-conv3x3 -> BN-ReLU-dropout-conv3x3 (the authors' code); dropout nowhere else."""
    model = WideResNetCifar(depth=16, widen_factor=2, num_classes=10, drop_rate=0.3)  # n = 2
    first, second = model.stages[0]
    assert isinstance(first, WideBasicBlock) and first.downsample is not None and second.downsample is None
    x = torch.randn(2, 16, 8, 8)
    branch = ["norm1", "act1", "conv1", "norm2", "act2", "drop", "conv2", "drop_path"]
    assert _call_order(first.train(), x) == ["norm1", "act1", "downsample", *branch[2:]]
    assert _call_order(second.train(), first(x)) == branch
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts == [u.drop for u in _units(model)] and {m.p for m in dropouts} == {0.3}
    assert model.stages[1][0].conv1.stride == (2, 2)  # the stride on the first 3x3

    torch.manual_seed(0)
    unit = second.eval()
    _randomise_norms(unit)
    y = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        expected = unit.conv2(F.relu(unit.norm2(unit.conv1(F.relu(unit.norm1(y)))))) + y
        torch.testing.assert_close(unit(y), expected)  # eval: dropout is the identity


@pytest.mark.unit
def test_wrn_dropout_defaults_to_the_papers_cifar_rate() -> None:
    for name in WRN:
        model = meta_model(name)
        assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.3}, name
        assert len([m for m in model.modules() if isinstance(m, nn.Dropout)]) == len(_units(model))
        assert not any(isinstance(m, nn.Dropout) for m in meta_model(name, drop_rate=0.0).modules())
    assert not any(isinstance(m, nn.Dropout) for m in meta_model("preact_resnet164_cifar").modules())


@pytest.mark.unit
def test_init_is_the_authors() -> None:
    """Convolutions N(0, 2 / (k^2 * out_channels)) (MSR init, fan-out), BN weight 1 / bias 0, classifier bias 0."""
    torch.manual_seed(0)
    model = create_model("preact_resnet164_cifar", num_classes=10)
    conv = model.stages[2][1].conv2  # 64 -> 64, 3x3: 36,864 weights
    assert conv.weight.std().item() == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.03)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    assert torch.all(model.fc.bias == 0)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


# --- drop-path, catalogue, errors -----------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("name", ["preact_resnet164_cifar", "wide_resnet40_4_cifar"])
def test_drop_path_on_the_residual_branches(name: str) -> None:
    assert drop_path_modules(meta_model(name)) == []
    model = meta_model(name, drop_path_rate=0.2)
    units = _units(model)
    rates = [u.drop_path.drop_prob for u in units[1:]]  # timm's rule: 0 at the first unit, so no module there
    assert drop_path_modules(model) == [u.drop_path for u in units[1:]]
    assert rates == pytest.approx([0.2 * i / (len(units) - 1) for i in range(1, len(units))])


@pytest.mark.unit
@pytest.mark.parametrize("name", [*PREACT, *WRN])
def test_cifar_entries(name: str) -> None:
    entry, defaults = get_entry(name), data_defaults(name)
    assert (entry.resolution, entry.crop_ratio, entry.source) == (32, 1.0, "own")
    assert (defaults.mean, defaults.std) == (CIFAR10_MEAN, CIFAR10_STD)
    cfg = timm.models.get_pretrained_cfg(entry.builder)
    assert (cfg.input_size, cfg.crop_pct) == ((3, 32, 32), 1.0)
    assert entry.top1 is None and entry.top5 is None  # CIFAR errors, not ImageNet accuracy: in the notes
    c10, c100 = {**PREACT_CIFAR_ERROR, **WRN_CIFAR_ERROR}[name]
    assert f"{c10} / {c100} %" in entry.notes


@pytest.mark.unit
def test_in_chans_and_num_classes() -> None:
    model = meta_model("wide_resnet40_4_cifar", num_classes=7, in_chans=1)
    x = torch.empty(2, 1, 32, 32, device="meta")
    assert model.stem.in_channels == 1 and model(x).shape == (2, 7)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 256)
    with torch.device("meta"):
        model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "kwargs", "text"),
    [
        ("wide_resnet28_10_cifar", {"depth": 30}, "depth=30"),
        ("wide_resnet28_10_cifar", {"depth": 4}, "depth=4"),
        ("wide_resnet28_10_cifar", {"widen_factor": 0}, "widen_factor=0"),
        ("wide_resnet28_10_cifar", {"widen_factor": 2.5}, "widen_factor=2.5"),
        ("preact_resnet164_cifar", {"depth": 100}, "depth=100"),
        ("preact_resnet164_cifar", {"depth": 2}, "depth=2"),
        ("preact_resnet164_cifar", {"drop_rate": 0.1}, "drop_rate"),  # the paper's units have no dropout
    ],
)
def test_bad_arguments_fail_in_one_line(name: str, kwargs: dict, text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        create_model(name, **kwargs)
    _assert_one_line_naming(exc, text)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("cls", "kwargs", "text"),
    [
        (WideResNetCifar, {"drop_rate": 1.0}, "drop_rate=1.0"),
        (WideResNetCifar, {"drop_path_rate": -0.1}, "drop_path_rate=-0.1"),
        (PreActResNetCifar, {"drop_path_rate": 1.5}, "drop_path_rate=1.5"),
    ],
)
def test_constructors_check_rates(cls: type, kwargs: dict, text: str) -> None:
    with pytest.raises(ConfigError) as exc, torch.device("meta"):
        cls(**kwargs)
    _assert_one_line_naming(exc, text)
