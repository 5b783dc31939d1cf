"""Inception-ResNet-v1 is the paper's network (Szegedy et al. 2017, arXiv:1602.07261): the Fig. 14 stem, the v1
blocks of Figs. 10-13, Reduction-A with Table 1's k, l, m, n, the map sizes of Fig. 15, BN off the summations."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import DropPath

from trainer.errors import ConfigError
from trainer.models import create_model, get_entry
from trainer.models.complexity import count_macs, meta_model
from trainer.models.inception_resnet_v1 import InceptionResNetV1
from trainer.models.regularization import drop_path_modules, set_drop_path_rate

NAME = "inception_resnet_v1"


def _conv_bn(in_chs: int, out_chs: int, kh: int, kw: int | None = None) -> int:
    """A convolution without bias followed by BN (weight and bias)."""
    return in_chs * out_chs * kh * (kw or kh) + 2 * out_chs


def _linear_1x1(in_chs: int, out_chs: int) -> int:
    """The "1x1 Conv (Linear)" before each residual addition: bias, no BN."""
    return in_chs * out_chs + out_chs


def _paper_params(num_classes: int = 1000) -> int:
    """The figures' layers counted by hand."""
    stem = (  # Fig. 14
        _conv_bn(3, 32, 3)
        + _conv_bn(32, 32, 3)
        + _conv_bn(32, 64, 3)
        + _conv_bn(64, 80, 1)
        + _conv_bn(80, 192, 3)
        + _conv_bn(192, 256, 3)
    )
    block_a = (  # Fig. 10
        _conv_bn(256, 32, 1)
        + _conv_bn(256, 32, 1)
        + _conv_bn(32, 32, 3)
        + _conv_bn(256, 32, 1)
        + 2 * _conv_bn(32, 32, 3)
        + _linear_1x1(96, 256)
    )
    k, l, m, n = 192, 192, 256, 384  # noqa: E741  (Table 1, Inception-ResNet-v1)
    reduction_a = _conv_bn(256, n, 3) + _conv_bn(256, k, 1) + _conv_bn(k, l, 3) + _conv_bn(l, m, 3)  # Fig. 7
    block_b = (  # Fig. 11
        _conv_bn(896, 128, 1)
        + _conv_bn(896, 128, 1)
        + _conv_bn(128, 128, 1, 7)
        + _conv_bn(128, 128, 7, 1)
        + _linear_1x1(256, 896)
    )
    reduction_b = (  # Fig. 12
        _conv_bn(896, 256, 1)
        + _conv_bn(256, 384, 3)
        + _conv_bn(896, 256, 1)
        + _conv_bn(256, 256, 3)
        + _conv_bn(896, 256, 1)
        + 2 * _conv_bn(256, 256, 3)
    )
    block_c = (  # Fig. 13
        _conv_bn(1792, 192, 1)
        + _conv_bn(1792, 192, 1)
        + _conv_bn(192, 192, 1, 3)
        + _conv_bn(192, 192, 3, 1)
        + _linear_1x1(384, 1792)
    )
    head = 1792 * num_classes + num_classes
    return stem + 5 * block_a + reduction_a + 10 * block_b + reduction_b + 5 * block_c + head


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.unit
def test_params_are_the_figures_layers() -> None:
    assert _num_params(meta_model(NAME)) == _paper_params() == get_entry(NAME).params == 22_756_328
    assert _num_params(meta_model(NAME, num_classes=10)) == _paper_params(10)
    # Reduction-A and -B concatenate their branches: 384 + 256 + 256 = 896, 384 + 256 + 256 + 896 = 1792 (Fig. 15)
    assert 384 + 256 + 256 == 896 and 384 + 256 + 256 + 896 == 1792


@pytest.mark.unit
def test_map_sizes_at_299_are_fig_15s() -> None:
    model = meta_model(NAME)
    shapes: dict[str, tuple[int, ...]] = {}
    names = ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "conv2d_4b")
    names += ("repeat", "mixed_6a", "repeat_1", "mixed_7a", "repeat_2")
    for key in names:
        getattr(model, key).register_forward_hook(
            lambda _m, _i, out, key=key: shapes.__setitem__(key, tuple(out.shape[1:]))
        )
    logits = model(torch.empty(1, 3, 299, 299, device="meta"))
    assert shapes == {
        "conv2d_1a": (32, 149, 149),
        "conv2d_2a": (32, 147, 147),
        "conv2d_2b": (64, 147, 147),
        "maxpool_3a": (64, 73, 73),
        "conv2d_3b": (80, 73, 73),
        "conv2d_4a": (192, 71, 71),
        "conv2d_4b": (256, 35, 35),  # the stem's output
        "repeat": (256, 35, 35),
        "mixed_6a": (896, 17, 17),
        "repeat_1": (896, 17, 17),
        "mixed_7a": (1792, 8, 8),
        "repeat_2": (1792, 8, 8),
    }
    assert model.num_features == 1792 and logits.shape == (1, 1000)


@pytest.mark.unit
def test_block_counts_kernels_and_head() -> None:
    model = meta_model(NAME)
    assert (len(model.repeat), len(model.repeat_1), len(model.repeat_2)) == (5, 10, 5)
    b_kernels = [m.kernel_size for m in model.repeat_1[0].branch1.modules() if isinstance(m, nn.Conv2d)]
    c_kernels = [m.kernel_size for m in model.repeat_2[0].branch1.modules() if isinstance(m, nn.Conv2d)]
    assert b_kernels == [(1, 1), (1, 7), (7, 1)] and c_kernels == [(1, 1), (1, 3), (3, 1)]
    # "V" (unpadded) convolutions of the figures; the others keep the size
    assert model.conv2d_1a.conv.padding == (0, 0) and model.conv2d_2b.conv.padding == (1, 1)
    assert model.head_drop.p == 0.2  # dropout, keep 0.8 (Fig. 15)
    assert [b.scale for b in (model.repeat[0], model.repeat_1[0], model.repeat_2[0])] == [0.17, 0.10, 0.20]


@pytest.mark.unit
def test_no_batch_norm_on_the_summations() -> None:
    """Sec. 3.2: BN after every convolution of the branches, none on the residual 1x1 or after the addition."""
    model = meta_model(NAME)
    for block in (*model.repeat, *model.repeat_1, *model.repeat_2):
        assert type(block.conv2d) is nn.Conv2d and block.conv2d.bias is not None
        assert isinstance(block.act, nn.ReLU)
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(norms) == len(convs) - 1  # every branch convolution has BN, the linear 1x1 none


@pytest.mark.unit
def test_residual_block_computes_the_scaled_sum() -> None:
    torch.manual_seed(0)
    model = InceptionResNetV1(residual_scales=(0.3, 0.1, 0.2)).eval()
    block = model.repeat[0]
    x = torch.randn(1, 256, 9, 9)
    with torch.no_grad():
        branches = torch.cat((block.branch0(x), block.branch1(x), block.branch2(x)), 1)
        expected = torch.relu(x + 0.3 * block.conv2d(branches))
        torch.testing.assert_close(block(x), expected)


@pytest.mark.unit
def test_drop_path_on_the_residual_branches() -> None:
    model = meta_model(NAME, drop_path_rate=0.2)
    modules = drop_path_modules(model)
    assert all(isinstance(m, DropPath) for m in modules)
    # 20 residual blocks, the first at rate 0 (no module), the last at 0.2, linear in between (timm's rule)
    assert len(modules) == 19
    assert [m.drop_prob for m in modules] == pytest.approx([0.2 * i / 19 for i in range(1, 20)])
    assert set_drop_path_rate(model, 0.1, num_blocks=20)[-1] == pytest.approx(0.1)
    assert not drop_path_modules(meta_model(NAME))


@pytest.mark.unit
def test_features_only_pyramid_at_299() -> None:
    with torch.device("meta"):
        model = create_model(NAME, features_only=True)
    assert model.feature_info.channels() == [64, 192, 256, 896, 1792]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    maps = model(torch.empty(1, 3, 299, 299, device="meta"))
    # unpadded stem and reductions: up to 3 px below 299 // reduction (the catalogue test's UNPADDED_LOSS)
    assert [m.shape[-1] for m in maps] == [147, 71, 35, 17, 8]
    assert max(299 // r - m.shape[-1] for m, r in zip(maps, model.feature_info.reduction(), strict=True)) == 3


@pytest.mark.unit
def test_cost_is_about_inception_v3s() -> None:
    """Sec. 3.1: Inception-ResNet-v1 has "roughly the computational cost of Inception-v3"."""
    ours = count_macs(meta_model(NAME), 299)
    with torch.device("meta"):
        v3 = timm.create_model("inception_v3").eval()
    ratio = ours / count_macs(v3, 299)
    assert 0.9 < ratio < 1.2, ratio


@pytest.mark.unit
def test_metadata() -> None:
    entry = get_entry(NAME)
    assert entry.family == get_entry("inception_resnet_v2").family and entry.recipe == "inception_v4"
    assert (entry.resolution, entry.crop_ratio, entry.min_resolution) == (299, 0.875, 75)
    assert (entry.top1, entry.top5) == pytest.approx((100 - 21.3, 100 - 5.5))  # Table 2 errors
    assert timm.models.get_pretrained_cfg(NAME).input_size == (3, 299, 299)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        (dict(residual_scales=(0.1, 0.2)), "residual_scales=(0.1, 0.2)"),
        (dict(drop_rate=1.0), "drop_rate=1.0"),
        (dict(drop_path_rate=-0.1), "drop_path_rate=-0.1"),
    ],
)
def test_bad_arguments_fail_in_one_line(kwargs: dict, text: str) -> None:
    for build in (lambda: InceptionResNetV1(**kwargs), lambda: create_model(NAME, **kwargs)):
        with pytest.raises(ConfigError) as exc:
            build()
        assert "\n" not in str(exc.value) and text in str(exc.value), str(exc.value)
