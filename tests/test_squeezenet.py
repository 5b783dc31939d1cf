"""SqueezeNet 1.0 / 1.1 and the bypass variants: the paper's Table 1 layer by layer, the bypasses of Sec. 6,
the conv10 head, bad input, and torchvision's weights giving torchvision's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

from trainer.errors import ConfigError
from trainer.models import create_model, load_weights
from trainer.models.complexity import count_macs, meta_model
from trainer.models.squeezenet import Fire

FIRE_NAMES = [f"fire{i}" for i in range(2, 10)]


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """The paper's layer names -> our modules (conv1, fire2..fire9, the max-pools, conv10)."""
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    fires = [m for m in model.features if isinstance(m, Fire)]
    return {"conv1": convs[0], **dict(zip(FIRE_NAMES, fires, strict=True)), "conv10": model.classifier}


def _output_shapes(model: nn.Module, resolution: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, key=key: shapes.__setitem__(key, tuple(out.shape[1:])))
        for key, module in _layers(model).items()
    ]
    pools = [(i, m) for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    hooks += [
        m.register_forward_hook(lambda _m, _i, out, key=f"pool@{i}": shapes.__setitem__(key, tuple(out.shape[1:])))
        for i, m in pools
    ]
    try:
        model(torch.empty(1, 3, resolution, resolution, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


# Table 1 of the paper (227 px input): output size and parameters before pruning, per layer
TABLE_1 = {
    "conv1": ((96, 111, 111), 14_208),
    "fire2": ((128, 55, 55), 11_920),
    "fire3": ((128, 55, 55), 12_432),
    "fire4": ((256, 55, 55), 45_344),
    "fire5": ((256, 27, 27), 49_440),
    "fire6": ((384, 27, 27), 104_880),
    "fire7": ((384, 27, 27), 111_024),
    "fire8": ((512, 27, 27), 188_992),
    "fire9": ((512, 13, 13), 197_184),
    "conv10": ((1000, 13, 13), 513_000),
}
TABLE_1_TOTAL = 1_248_424


@pytest.mark.unit
def test_squeezenet1_0_is_table_1() -> None:
    model = meta_model("squeezenet1_0")
    layers = _layers(model)
    assert {key: _num_params(m) for key, m in layers.items()} == {k: v[1] for k, v in TABLE_1.items()}
    assert _num_params(model) == TABLE_1_TOTAL
    shapes = _output_shapes(model, 227)
    assert {key: shapes[key] for key in TABLE_1} == {k: v[0] for k, v in TABLE_1.items()}
    # max-pools after conv1, fire4 and fire8 (Sec. 3.3): 111 -> 55, 55 -> 27, 27 -> 13
    assert sorted(v for k, v in shapes.items() if k.startswith("pool@")) == [(96, 55, 55), (256, 27, 27), (512, 13, 13)]
    conv1 = layers["conv1"]
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((7, 7), (2, 2), (0, 0))
    for name in FIRE_NAMES:  # squeeze 1x1, expand 1x1 and 3x3 (padding 1) concatenated
        fire = layers[name]
        assert fire.squeeze.kernel_size == fire.expand1x1.kernel_size == (1, 1)
        assert (fire.expand3x3.kernel_size, fire.expand3x3.padding) == ((3, 3), (1, 1))
        assert fire.bypass is None


@pytest.mark.unit
def test_squeezenet1_0_at_224() -> None:
    """The catalogue's 224 px: conv1 gives 109x109 (227: 111x111), and the maps from fire4 on are the paper's."""
    model = meta_model("squeezenet1_0")
    shapes = _output_shapes(model, 224)
    assert shapes["conv1"] == (96, 109, 109)
    assert shapes["fire4"] == (256, 54, 54)
    assert shapes["fire8"] == (512, 27, 27) and shapes["fire9"] == (512, 13, 13)


@pytest.mark.unit
def test_squeezenet1_1_is_the_authors_v1_1() -> None:
    """conv1 64 3x3/2; pools after conv1, fire3, fire5; the same fire modules; 2.4x less computation than 1.0."""
    v10, v11 = meta_model("squeezenet1_0"), meta_model("squeezenet1_1")
    conv1 = _layers(v11)["conv1"]
    assert (conv1.out_channels, conv1.kernel_size, conv1.stride) == (64, (3, 3), (2, 2))
    kinds = ["pool" if isinstance(m, nn.MaxPool2d) else type(m).__name__ for m in v11.features]
    assert kinds == ["Conv2d", "ReLU", "pool", "Fire", "Fire", "pool", "Fire", "Fire", "pool", *["Fire"] * 4]
    for name in FIRE_NAMES[1:]:  # fire3..fire9 are 1.0's; fire2 reads 64 channels instead of 96
        assert _num_params(_layers(v11)[name]) == TABLE_1[name][1]
    macs_10, macs_11 = count_macs(v10, 224), count_macs(v11, 224)
    assert macs_10 / macs_11 == pytest.approx(2.4, rel=0.03)
    # torchvision's counts (architectures.md): 0.82 and 0.35 GMACs
    assert macs_10 / 1e9 == pytest.approx(0.82, rel=0.01) and macs_11 / 1e9 == pytest.approx(0.35, rel=0.01)


@pytest.mark.unit
def test_bypass_variants_are_section_6() -> None:
    vanilla = meta_model("squeezenet1_0")
    simple = _layers(meta_model("squeezenet1_0_simple_bypass"))
    complex_ = _layers(meta_model("squeezenet1_0_complex_bypass"))
    for name in ("fire3", "fire5", "fire7", "fire9"):  # in == out channels: identity in both variants
        assert isinstance(simple[name].bypass, nn.Identity) and isinstance(complex_[name].bypass, nn.Identity)
    extra = 0
    for name in ("fire2", "fire4", "fire6", "fire8"):
        assert simple[name].bypass is None
        conv = complex_[name].bypass
        fire = complex_[name]
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
        assert conv.in_channels == fire.squeeze.in_channels
        assert conv.out_channels == fire.expand1x1.out_channels + fire.expand3x3.out_channels
        extra += conv.in_channels * conv.out_channels + conv.out_channels
    assert extra == (96 * 128 + 128) + (128 * 256 + 256) + (256 * 384 + 384) + (384 * 512 + 512) == 341_248
    assert _num_params(meta_model("squeezenet1_0_simple_bypass")) == _num_params(vanilla)  # identity: no weights
    assert _num_params(meta_model("squeezenet1_0_complex_bypass")) == _num_params(vanilla) + extra


@pytest.mark.unit
def test_bypass_adds_the_input_without_another_relu() -> None:
    torch.manual_seed(0)
    plain, identity, conv = Fire(8, 4, 4, 4), Fire(8, 4, 4, 4, bypass="identity"), Fire(8, 4, 4, 4, bypass="conv")
    identity.load_state_dict(plain.state_dict())
    conv.load_state_dict({**plain.state_dict(), **{f"bypass.{k}": v for k, v in conv.bypass.state_dict().items()}})
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(identity(x), plain(x) + x)  # "output of Fire2 + output of Fire3"
        torch.testing.assert_close(conv(x), plain(x) + conv.bypass(x))
        assert (identity(x) < 0).any(), "the sum is not rectified again"


@pytest.mark.unit
def test_conv_head_and_pre_logits() -> None:
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", num_classes=10).eval()
    assert isinstance(model.head_drop, nn.Dropout) and model.head_drop.p == 0.5  # after fire9 (Sec. 3.3.1)
    conv10 = model.get_classifier()
    assert isinstance(conv10, nn.Conv2d) and conv10.kernel_size == (1, 1) and conv10.out_channels == 10
    assert not any(isinstance(m, nn.Linear) for m in model.modules()), "no fully connected layer"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        assert pooled.shape == (2, 512)
        torch.testing.assert_close(pooled, features.mean((2, 3)))  # fire9's pooled maps, what conv10 reads
        logits = model(x)
        torch.testing.assert_close(logits, torch.relu(conv10(features)).mean((2, 3)))
        assert (logits >= 0).all(), "conv10 is followed by a ReLU, then the average"
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.get_classifier().out_channels == 5
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pooled)  # no conv10: the pooled features


@pytest.mark.unit
def test_init_is_the_authors_prototxt() -> None:
    """Xavier (Caffe: U(+-sqrt(3 / fan_in))) for the convolutions, N(0, 0.01) for conv10, zero biases."""
    torch.manual_seed(0)
    model = create_model("squeezenet1_0")
    layers = _layers(model)
    conv10 = layers.pop("conv10")
    assert conv10.weight.std().item() == pytest.approx(0.01, rel=0.02)
    for name, layer in layers.items():
        convs = [layer] if isinstance(layer, nn.Conv2d) else [layer.squeeze, layer.expand1x1, layer.expand3x3]
        for conv in convs:
            bound = (3 / (conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1])) ** 0.5
            assert conv.weight.abs().max().item() <= bound, name
            assert conv.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.1), name
            assert torch.all(conv.bias == 0), name


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kwargs", "named"), [(dict(bypass="complicated"), "bypass='complicated'"), (dict(version="1_2"), "version='1_2'")]
)
def test_bad_arguments_raise_one_line(kwargs: dict, named: str) -> None:
    with pytest.raises(ConfigError) as exc:
        create_model("squeezenet1_0", **kwargs)
    assert "\n" not in str(exc.value) and named in str(exc.value)


@pytest.mark.unit
@pytest.mark.parametrize("version", ["1_0", "1_1"])
def test_torchvision_weights_give_torchvisions_outputs(version: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"squeezenet{version}")(weights=None).eval()
    meta = getattr(torchvision.models, f"SqueezeNet{version}_Weights").IMAGENET1K_V1.meta
    path = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model(f"squeezenet{version}").eval()
    assert _num_params(ours) == meta["num_params"]
    report = load_weights(ours, path)
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    assert report.loaded == len(reference.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() <= 1e-5
