"""Darknet-19 is Table 6 of YOLO9000 (layers, channels, pools, leaky slope, map sizes) and has its 5.58 B operations;
darknet19_448 is the same network at 448 px."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from trainer.errors import ConfigError
from trainer.models import create_model, get_entry
from trainer.models.complexity import count_macs, meta_model
from trainer.models.darknet import Darknet19

# Table 6: (filters, size) of the 19 convolutions in order, "M" for the 2x2/2 max-pools
TABLE_6 = [
    (32, 3), "M",
    (64, 3), "M",
    (128, 3), (64, 1), (128, 3), "M",
    (256, 3), (128, 1), (256, 3), "M",
    (512, 3), (256, 1), (512, 3), (256, 1), (512, 3), "M",
    (1024, 3), (512, 1), (1024, 3), (512, 1), (1024, 3),
    (1000, 1),
]  # fmt: skip
TABLE_6_CONVS = [layer for layer in TABLE_6 if layer != "M"]


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]


def _table_6_params() -> int:
    """Hand count: conv weights, BN scale and shift for the first 18, weights and bias for the classifier."""
    total, chs = 0, 3
    for filters, size in TABLE_6_CONVS[:-1]:
        total += chs * filters * size * size + 2 * filters
        chs = filters
    return total + chs * 1000 + 1000


@pytest.mark.unit
def test_darknet19_is_table_6() -> None:
    model = meta_model("darknet19")
    layers = _layers(model)
    got = ["M" if isinstance(m, nn.MaxPool2d) else (m.out_channels, m.kernel_size[0]) for m in layers]
    assert got == TABLE_6
    assert len(TABLE_6_CONVS) == 19 and TABLE_6.count("M") == 5  # "19 convolutional layers and 5 maxpooling layers"
    assert all((m.kernel_size, m.stride) == (2, 2) for m in layers if isinstance(m, nn.MaxPool2d))
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert all(c.stride == (1, 1) and c.padding == (c.kernel_size[0] // 2,) * 2 for c in convs)

    # BN and leaky ReLU (slope 0.1) after every convolution but the classifier, which has a bias and no activation
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.SiLU))]
    assert len(norms) == len(acts) == 18
    assert all(isinstance(a, nn.LeakyReLU) and a.negative_slope == 0.1 for a in acts)
    assert all(c.bias is None for c in convs[:-1])
    assert model.get_classifier() is convs[-1] and convs[-1].bias is not None


@pytest.mark.unit
def test_map_sizes_at_224() -> None:
    """Table 6's output column: 224 for the first conv, halved by each pool down to 7x7 for the last stage and the
    classifier, then the global average pool."""
    model = meta_model("darknet19")
    sizes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1])) for m in _layers(model)]
    out = model(torch.empty(1, 3, 224, 224, device="meta"))
    for hook in hooks:
        hook.remove()
    expected, size = [], 224
    for layer in TABLE_6:
        size = size // 2 if layer == "M" else size
        expected.append(size)
    assert sizes == expected and expected[-1] == 7
    assert out.shape == (1, 1000)


@pytest.mark.unit
def test_operations_and_params() -> None:
    """Table 6: 5.58 billion operations at 224 px, a multiply and an add counted apart (2 per multiply-add; the
    paper rounds to 0.01 B, 0.2 %). YOLOv3's Table 2 gives the same network 7.29 B at 256 px. Parameters: the paper
    gives none; the count is Table 6's by hand (20.84 M)."""
    model = meta_model("darknet19")
    assert 2 * count_macs(model, 224) / 1e9 == pytest.approx(5.58, abs=0.005)
    assert 2 * count_macs(model, 256) / 1e9 == pytest.approx(7.29, abs=0.005)
    assert sum(p.numel() for p in model.parameters()) == _table_6_params() == get_entry("darknet19").params


@pytest.mark.unit
def test_darknet19_448_is_the_same_network() -> None:
    small, large = get_entry("darknet19"), get_entry("darknet19_448")
    assert small.builder == large.builder and small.params == large.params
    assert (small.resolution, large.resolution) == (224, 448)
    assert (small.top1, small.top5, large.top1, large.top5) == (72.9, 91.2, 76.5, 93.3)
    model = meta_model("darknet19_448")
    assert count_macs(model, 448) == 4 * count_macs(model, 224)


@pytest.mark.unit
def test_features_only_strides() -> None:
    with torch.device("meta"):
        model = create_model("darknet19", features_only=True)
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert model.feature_info.channels() == [64, 128, 256, 512, 1024]
    maps = model(torch.empty(1, 3, 448, 448, device="meta"))
    assert [m.shape[-1] for m in maps] == [224, 112, 56, 28, 14]


@pytest.mark.unit
def test_odd_maps_round_up_as_darknets_pool() -> None:
    """Darknet pads its 2x2/2 max-pool on the right and bottom: 100 -> 50 -> 25 -> 13 -> 7 -> 4."""
    with torch.device("meta"):
        model = create_model("darknet19", features_only=True)
    maps = model(torch.empty(1, 3, 100, 100, device="meta"))
    assert [m.shape[-1] for m in maps] == [50, 25, 13, 7, 4]


@pytest.mark.unit
def test_head_is_the_classifier_convolution() -> None:
    torch.manual_seed(0)
    model = create_model("darknet19", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        assert pooled.shape == (2, 1024)
        # the 1x1 convolution commutes with the average pool: classifying the pooled map gives the same logits
        classifier = model.get_classifier()
        assert isinstance(classifier, nn.Conv2d) and classifier.kernel_size == (1, 1)
        by_pooled = nn.functional.linear(pooled, classifier.weight.flatten(1), classifier.bias)
        torch.testing.assert_close(model(x), by_pooled, rtol=1e-4, atol=1e-5)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.get_classifier().out_channels == 5
        model.reset_classifier(0)
        assert model(x).shape == (2, 1024)


@pytest.mark.unit
def test_init_is_darknets() -> None:
    """Darknet: weights sqrt(2 / (k * k * c_in)) * N(0, 1), biases 0."""
    torch.manual_seed(0)
    model = create_model("darknet19")
    for conv in (model.stages[3].conv1.conv, model.stages[4].conv2.conv, model.get_classifier()):
        fan_in = conv.weight[0].numel()
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    assert torch.all(model.get_classifier().bias == 0)


@pytest.mark.unit
def test_bad_drop_rate_raises_one_line() -> None:
    with pytest.raises(ConfigError) as exc:
        Darknet19(drop_rate=1.5)
    assert "\n" not in str(exc.value) and "drop_rate=1.5" in str(exc.value)
