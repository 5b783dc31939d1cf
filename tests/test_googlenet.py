"""GoogLeNet as in Szegedy et al. 2015 (Table 1, Fig. 3, Sec. 5), and torchvision's batch-normalised GoogLeNet."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

from trainer.errors import ConfigError
from trainer.models import create_model, get_entry, load_weights
from trainer.models.complexity import count_macs, meta_model
from trainer.models.googlenet import ConvBlock, Inception
from trainer.models.layers import LocalResponseNorm

# Table 1, typed from the paper: module -> (input channels, output size, output channels, #1x1, #3x3 reduce, #3x3,
# #5x5 reduce, #5x5, pool proj, "params" column (K), "ops" column (M))
TABLE1 = {
    "3a": (192, 28, 256, 64, 96, 128, 16, 32, 32, 159, 128),
    "3b": (256, 28, 480, 128, 128, 192, 32, 96, 64, 380, 304),
    "4a": (480, 14, 512, 192, 96, 208, 16, 48, 64, 364, 73),
    "4b": (512, 14, 512, 160, 112, 224, 24, 64, 64, 437, 88),
    "4c": (512, 14, 512, 128, 128, 256, 24, 64, 64, 463, 100),
    "4d": (512, 14, 528, 112, 144, 288, 32, 64, 64, 580, 119),
    "4e": (528, 14, 832, 256, 160, 320, 32, 128, 128, 840, 170),
    "5a": (832, 7, 832, 256, 160, 320, 32, 128, 128, 1072, 54),
    "5b": (832, 7, 1024, 384, 192, 384, 48, 128, 128, 1388, 71),
}
# the other rows: conv 7x7/2 (2.7K, 34M), conv 3x3 with a 64 reduce (112K, 360M), linear (1000K, 1M)
TABLE1_OTHER_PARAMS_K, TABLE1_OTHER_OPS_M = 2.7 + 112 + 1000, 34 + 360 + 1
PLAIN_CONV1 = 7 * 7 * 3 * 64  # Fig. 3's 7x7/2 convolution
SEPARABLE_CONV1 = 7 * 7 * 3 * 8 + 3 * 8 * 64  # depthwise x8 then 1x1: what Table 1's 2.7K / 34M row counts
CONV2_CONV3 = 64 * 64 + 9 * 64 * 192


def _module_weights(row: tuple[int, ...]) -> int:
    """Table 1's module, counted by hand: weights of 1x1, 1x1 -> 3x3, 1x1 -> 5x5, pool -> 1x1 (no biases)."""
    cin, _, _, c1, r3, c3, r5, c5, proj, _, _ = row
    return cin * c1 + cin * r3 + 9 * r3 * c3 + cin * r5 + 25 * r5 * c5 + cin * proj


def _module_convs(row: tuple[int, ...]) -> int:
    """Output channels of a module's convolutions (one bias each)."""
    _, _, _, c1, r3, c3, r5, c5, proj, _, _ = row
    return c1 + r3 + c3 + r5 + c5 + proj


def _shapes(model: nn.Module, names: list[str], resolution: int = 224) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, key=n: shapes.__setitem__(key, tuple(out.shape[1:]))
        )
        for n in names
    ]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, resolution, resolution, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


@pytest.fixture(scope="module")
def paper_net() -> nn.Module:
    return meta_model("googlenet")


# --- the paper's network ------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_table1_channels_and_output_sizes(paper_net: nn.Module) -> None:
    for name, (cin, _size, _cout, c1, r3, c3, r5, c5, proj, _, _) in TABLE1.items():
        block = paper_net.get_submodule(f"inception{name}")
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        assert [(m.in_channels, m.out_channels, m.kernel_size[0]) for m in convs] == [
            (cin, c1, 1),
            (cin, r3, 1),
            (r3, c3, 3),
            (cin, r5, 1),
            (r5, c5, 5),
            (cin, proj, 1),
        ], name
    stem = ["conv1", "maxpool1", "conv3", "maxpool2", "maxpool3", "maxpool4", "global_pool"]
    shapes = _shapes(paper_net, stem + [f"inception{n}" for n in TABLE1])
    # Table 1's output sizes at 224: 112, 56, 28, 14, 7, then 1
    assert {k: shapes[k] for k in stem} == {
        "conv1": (64, 112, 112),
        "maxpool1": (64, 56, 56),
        "conv3": (192, 56, 56),
        "maxpool2": (192, 28, 28),
        "maxpool3": (480, 14, 14),
        "maxpool4": (832, 7, 7),
        "global_pool": (1024,),  # timm's pooling flattens
    }
    for name, (_, size, cout, *_rest) in TABLE1.items():
        assert shapes[f"inception{name}"] == (cout, size, size), name


@pytest.mark.unit
def test_table1_ops_column_is_the_networks(paper_net: nn.Module) -> None:
    """Each module's multiply-adds, measured, are the hand count from its channels; Table 1's "ops" column agrees
    within 1 M except 5a, whose 1072K / 54M are consistent with each other but not with its channel columns
    (1,042,432 weights, 51.1 M), which torchvision and the Caffe model follow."""
    for name, row in TABLE1.items():
        size, ops_m = row[1], row[-1]
        hand = _module_weights(row) * size * size
        assert count_macs(paper_net.get_submodule(f"inception{name}"), TABLE1[name][1], in_chans=row[0]) == hand
        assert abs(hand / 1e6 - ops_m) <= (3.0 if name == "5a" else 1.0), name
    # the column's other rows: the separable 7x7 (34 M) and the 1x1 + 3x3 (360 M) at 112x112 and 56x56
    assert round(SEPARABLE_CONV1 * 112 * 112 / 1e6) == 34
    assert round(CONV2_CONV3 * 56 * 56 / 1e6) == 360


@pytest.mark.unit
def test_params_against_table1(paper_net: nn.Module) -> None:
    """Weights counted by hand from Table 1's channels, plus one bias per output channel, are the model's count.
    The paper's "params" column adds up to 6797.7K ("about 6.8 M"); by hand the same layers hold 6.98 M weights
    (6.82 Mi: the column's K is 1024): the column rounds and slips in places (4c 463K for 509,440 weights, 5a 1072K
    for 1,042,432), and its first row counts the separable 7x7 (2,712 weights) where Fig. 3's has 9,408."""
    modules = sum(_module_weights(row) for row in TABLE1.values())
    fc = 1024 * 1000
    hand_weights = PLAIN_CONV1 + CONV2_CONV3 + modules + fc
    biases = 64 + 64 + 192 + sum(_module_convs(row) for row in TABLE1.values()) + 1000
    no_aux = meta_model("googlenet", aux_logits=False)
    assert sum(p.numel() for p in no_aux.parameters()) == hand_weights + biases == 6_998_552

    table_column_k = sum(row[-2] for row in TABLE1.values()) + TABLE1_OTHER_PARAMS_K
    assert table_column_k == pytest.approx(6797.7)
    as_the_column_counts = hand_weights - PLAIN_CONV1 + SEPARABLE_CONV1
    assert as_the_column_counts / 1024 == pytest.approx(table_column_k, rel=0.01)

    # Sec. 5's auxiliary heads: 1x1 conv 128 on 4a (512) / 4d (528), FC 2048 -> 1024, FC 1024 -> 1000, with biases
    aux = sum(cin * 128 + 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000 for cin in (512, 528))
    assert sum(p.numel() for p in paper_net.parameters()) == 6_998_552 + aux
    # the catalogue counts as the paper does: the inference network, the heads apart
    assert (get_entry("googlenet").params, get_entry("googlenet").aux_params) == (6_998_552, aux)


@pytest.mark.unit
def test_mult_adds_are_the_papers_1_5_billion(paper_net: nn.Module) -> None:
    """Sec. 5: "1.5 billion multiply-adds at inference time"; Table 1's "ops" column adds up to 1502 M. Ours
    (1.583 G) has Fig. 3's plain 7x7 conv1 (118 M); with Table 1's separable one (34 M) it is 1.499 G."""
    macs = count_macs(paper_net, 224)
    table_column_m = sum(row[-1] for row in TABLE1.values()) + TABLE1_OTHER_OPS_M
    assert table_column_m == 1502
    as_the_table_counts = macs - (PLAIN_CONV1 - SEPARABLE_CONV1) * 112 * 112
    assert as_the_table_counts / 1e6 == pytest.approx(table_column_m, rel=0.005)
    assert macs == pytest.approx(1.583e9, rel=0.001)


@pytest.mark.unit
def test_naive_inception_costs_854m_and_the_bottleneck_module_271m() -> None:
    """The reference fact (CS231n 2017, Lecture 9, on GoogLeNet's Fig. 2, not the paper itself): at 28x28x256, a
    naive module of 1x1 128, 3x3 192, 5x5 96 and a 3x3 pool costs 854 M multiply-adds. The slide's bottleneck version
    (1x1 64 before the 3x3 and the 5x5 and after the pool) is our Inception module; its own layer list adds up to
    271 M, not the slide's 358 M (the slide's total counts the 3x3 conv on 128 channels instead of 64)."""
    naive = nn.ModuleList([nn.Conv2d(256, 128, 1), nn.Conv2d(256, 192, 3, padding=1), nn.Conv2d(256, 96, 5, padding=2)])
    with torch.device("meta"):
        naive_macs = sum(count_macs(conv, 28, in_chans=256) for conv in naive)
        bottleneck = Inception(256, 128, 64, 192, 64, 96, 64, conv_block=ConvBlock)
    assert round(naive_macs / 1e6) == 854
    macs = count_macs(bottleneck, 28, in_chans=256)
    pixels = 28 * 28
    assert macs == pixels * (64 * 256 * 3 + 128 * 256 + 192 * 9 * 64 + 96 * 25 * 64)
    assert round(macs / 1e6) == 271
    slide_total = pixels * (64 * 256 * 3 + 128 * 256 + 192 * 9 * 128 + 96 * 25 * 64)
    assert round(slide_total / 1e6) == 358


@pytest.mark.unit
def test_stem_is_fig3_with_caffe_lrn(paper_net: nn.Module) -> None:
    names = [n for n, _ in paper_net.named_children()][:7]
    assert names == ["conv1", "maxpool1", "norm1", "conv2", "conv3", "norm2", "maxpool2"]
    for lrn in (paper_net.norm1, paper_net.norm2):
        assert isinstance(lrn, LocalResponseNorm)
        assert (lrn.n, lrn.alpha, lrn.beta, lrn.k) == (5, pytest.approx(2e-5), 0.75, 1.0)
    # the Caffe model's (local_size 5, alpha 1e-4, beta 0.75, k 1, alpha / n), which torch's layer also computes
    x = 40 * torch.randn(2, 64, 5, 5, dtype=torch.float64)
    lrn = LocalResponseNorm(n=5, alpha=1e-4 / 5, beta=0.75, k=1.0)
    torch.testing.assert_close(lrn(x), nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)(x))


@pytest.mark.unit
def test_no_batch_norm_dropout_and_aux_heads_as_sec5(paper_net: nn.Module) -> None:
    assert not any(isinstance(m, nn.BatchNorm2d) for m in paper_net.modules())
    assert all(m.bias is not None for m in paper_net.modules() if isinstance(m, nn.Conv2d))
    assert paper_net.head_drop.p == 0.4
    for head, cin in ((paper_net.aux1, 512), (paper_net.aux2, 528)):
        assert (head.pool.kernel_size, head.pool.stride) == (5, 3)
        assert (head.conv.conv.in_channels, head.conv.conv.out_channels, head.conv.conv.kernel_size) == (
            cin,
            128,
            (1, 1),
        )
        assert (head.fc1.in_features, head.fc1.out_features, head.fc2.out_features) == (128 * 4 * 4, 1024, 1000)
        assert head.dropout.p == 0.7
    # at 224 the 5x5/3 pool already gives 4x4 (the adaptive pool is the identity there)
    shapes = _shapes(paper_net.train(), ["aux1.pool", "aux2.pool"])
    paper_net.eval()
    assert shapes == {"aux1.pool": (512, 4, 4), "aux2.pool": (528, 4, 4)}


@pytest.mark.unit
def test_caffe_init() -> None:
    torch.manual_seed(0)
    model = create_model("googlenet")
    classifiers = {model.fc, model.aux1.fc2, model.aux2.fc2}
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert torch.all(m.bias == (0.0 if m in classifiers else 0.2))
            bound = (3.0 / m.weight[0].numel()) ** 0.5
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound


@pytest.mark.unit
def test_aux_heads_in_training_only() -> None:
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=7)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        outputs = model.train()(x)
        assert isinstance(outputs, tuple) and [o.shape for o in outputs] == [(2, 7)] * 3
        assert model.eval()(x).shape == (2, 7)
        model.reset_classifier(5)
        assert [o.shape for o in model.train()(x)] == [(2, 5)] * 3
    assert model.get_classifier().out_features == 5

    # the catalogue's size check is the entry's (79 px, with the heads); the network without them runs smaller
    plain = timm.create_model("googlenet", aux_logits=False, num_classes=7)
    assert plain.aux1 is None and plain.aux2 is None
    assert not any(n.startswith("aux") for n, _ in plain.named_parameters())
    with torch.no_grad():
        assert plain.train()(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "channels"), [("googlenet", [64, 192, 480, 832, 1024]), ("googlenet_bn", [64, 192, 480, 832, 1024])]
)
def test_feature_pyramid(name: str, channels: list[int]) -> None:
    with torch.device("meta"):
        model = timm.create_model(name, features_only=True)
    assert model.feature_info.channels() == channels
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    maps = model(torch.empty(1, 3, 224, 224, device="meta"))
    sizes = [112, 56, 28, 14, 7]  # Table 1's
    assert [tuple(m.shape[1:]) for m in maps] == [(c, s, s) for c, s in zip(channels, sizes, strict=True)]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        (dict(branch3_kernel=4), "googlenet: branch3_kernel=4 is not one of 3, 5"),
        (dict(pool4_kernel=5), "pool4_kernel=5"),
        (dict(aux_drop_rate=1.0), "googlenet: aux_drop_rate=1.0 is outside [0, 1)"),
    ],
)
def test_bad_arguments_raise_one_line(kwargs: dict, text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        create_model("googlenet", **kwargs)
    assert "\n" not in str(exc.value) and text in str(exc.value)


# --- torchvision's network ----------------------------------------------------------------------------------------


@pytest.mark.unit
def test_googlenet_bn_is_torchvisions() -> None:
    model = meta_model("googlenet_bn")
    with torch.device("meta"):
        reference = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in reference.parameters()) == get_entry("googlenet_bn").params == 6_624_904
    assert count_macs(model, 224) / 1e9 == pytest.approx(1.50, abs=0.005)  # torchvision's metadata: 1.498
    assert model.inception3a.branch3[1].conv.kernel_size == (3, 3)  # torchvision's quirk (pytorch/vision#906)
    assert {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.001}
    assert not any(isinstance(m, LocalResponseNorm) for m in model.modules())
    assert model.aux1 is None and model.head_drop.p == 0.2


def _torchvision_googlenet(aux_logits: bool) -> nn.Module:
    torch.manual_seed(0)
    reference = torchvision.models.googlenet(
        weights=None, aux_logits=aux_logits, transform_input=False, init_weights=True
    )
    for m in reference.modules():  # trained-looking BN statistics, so that a BN mix-up would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return reference.eval()


def _load(model: nn.Module, reference: nn.Module, path: Path) -> None:
    torch.save(reference.state_dict(), path)
    report = load_weights(model, path)
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    assert report.loaded == len(model.state_dict())


@pytest.mark.unit
def test_torchvision_weights_give_the_same_network(tmp_path: Path) -> None:
    reference = _torchvision_googlenet(aux_logits=False)
    ours = create_model("googlenet_bn").eval()
    _load(ours, reference, tmp_path / "tv_googlenet.pth")
    assert len(ours.state_dict()) == len(reference.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() <= 1e-5


@pytest.fixture(scope="module")
def torchvision_with_aux() -> nn.Module:
    return _torchvision_googlenet(aux_logits=True)


@pytest.mark.unit
def test_torchvision_aux_weights_load_too(torchvision_with_aux: nn.Module, tmp_path: Path) -> None:
    """With aux_logits=True every tensor loads; in training mode (the same dropout draws) the three outputs are
    torchvision's (which returns (logits, aux2, aux1)). 96 px: the aux heads' adaptive pool runs at any size."""
    reference = torchvision_with_aux
    ours = create_model("googlenet_bn", aux_logits=True).eval()
    _load(ours, reference, tmp_path / "tv_googlenet_aux.pth")
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert (ours(x) - reference.eval()(x)).abs().max().item() <= 1e-5
        torch.manual_seed(1)
        main, aux1, aux2 = ours.train()(x)
        torch.manual_seed(1)
        expected = reference.train()(x)
    reference.eval()
    for got, want in ((main, expected.logits), (aux1, expected.aux_logits1), (aux2, expected.aux_logits2)):
        assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.unit
def test_torchvision_checkpoint_with_aux_heads_loads_into_the_default_build(
    torchvision_with_aux: nn.Module, tmp_path: Path
) -> None:
    """torchvision's checkpoints hold the aux heads; the default build has none: checkpoint_filter_fn drops them."""
    ours = create_model("googlenet_bn").eval()
    _load(ours, torchvision_with_aux, tmp_path / "tv_googlenet_aux.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - torchvision_with_aux.eval()(x)).abs().max().item() <= 1e-5
