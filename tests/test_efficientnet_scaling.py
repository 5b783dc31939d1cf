"""EfficientNet compound scaling as code (Tan & Le 2019, Sec. 3.3): phi=0 is B0; widths, depths and resolutions
follow the closed form; MACs grow by about (alpha * beta^2 * gamma^2)^phi ~= 2^phi; bad arguments fail loudly."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.errors import ConfigError
from trainer.models.complexity import count_macs, meta_model
from trainer.models.efficientnet import efficientnet

# B0's stages (Table 1): output channels and repeats; stem 32 and head 1280 channels
B0_CHANNELS = (16, 24, 40, 80, 112, 192, 320)
B0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15


def _round_filters(channels: int, width: float) -> int:
    """The official `round_filters`: nearest multiple of 8, never below 90 % of the exact value."""
    exact = channels * width
    rounded = max(8, int(exact + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * exact else rounded


def _meta_efficientnet(phi: float, **kwargs):
    with torch.device("meta"):
        return efficientnet(phi, **kwargs)


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.unit
def test_phi_0_is_b0() -> None:
    model, resolution = _meta_efficientnet(0)
    b0 = meta_model("efficientnet_b0")
    assert resolution == 224
    assert _num_params(model) == _num_params(b0) == 5_288_548
    assert count_macs(model.eval(), 224) == count_macs(b0, 224)
    assert model.drop_rate == 0.2


@pytest.mark.unit
@pytest.mark.parametrize("phi", range(1, 8))
def test_widths_depths_resolution_follow_the_closed_form(phi: int) -> None:
    model, resolution = _meta_efficientnet(phi)
    width, depth = BETA**phi, ALPHA**phi
    assert resolution == round(224 * GAMMA**phi)
    assert model.conv_stem.out_channels == _round_filters(32, width)
    assert model.conv_head.out_channels == _round_filters(1280, width)
    assert [len(stage) for stage in model.blocks] == [math.ceil(r * depth) for r in B0_REPEATS]
    assert [stage[-1].conv_pwl.out_channels for stage in model.blocks[1:]] == [
        _round_filters(c, width) for c in B0_CHANNELS[1:]
    ]
    assert model.blocks[0][-1].conv_pw.out_channels == _round_filters(B0_CHANNELS[0], width)  # depthwise-separable
    assert model.drop_rate == (0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5, 0.5)[phi]


@pytest.mark.unit
def test_macs_grow_about_2_to_the_phi() -> None:
    """FLOPs scale with d * w^2 * r^2 = (alpha * beta^2 * gamma^2)^phi = 1.92^phi for the paper's bases (Sec. 3.3).

    Tolerance: rounding moves the real networks off the formula, always upwards at small phi. Repeats are rounded up
    per stage (phi=1: 23 blocks for the formula's 19.2, +20 % depth), channels go to multiples of 8 (a few % on
    w^2), and the stem (not depth-scaled) and classifier (not resolution-scaled) grow more slowly. Measured, MACs are
    1.34x the formula at phi=1, falling to 1.04-1.07x at phi=6-7; the test allows [0.95, 1.40]x. From phi=2 on, the
    geometric-mean growth per unit of phi, ratio^(1/phi), is "about 2": measured 2.17 ... 1.93, allowed [1.9, 2.2].
    """
    model, resolution = _meta_efficientnet(0)
    base = count_macs(model.eval(), resolution)
    for phi in range(1, 8):
        model, resolution = _meta_efficientnet(phi)
        ratio = count_macs(model.eval(), resolution) / base
        assert 0.95 <= ratio / (ALPHA * BETA**2 * GAMMA**2) ** phi <= 1.40, (phi, ratio)
        if phi >= 2:
            assert 1.9 <= ratio ** (1 / phi) <= 2.2, (phi, ratio)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"phi": -1}, "phi"),
        ({"phi": 1, "alpha": 0.9}, "alpha"),
        ({"phi": 1, "beta": 0.5}, "beta"),
        ({"phi": 1, "gamma": 0.99}, "gamma"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict, named: str) -> None:
    with pytest.raises(ConfigError) as exc:
        efficientnet(**kwargs)
    message = str(exc.value)
    assert "\n" not in message and named in message, message
