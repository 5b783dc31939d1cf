"""NASNet-A Mobile is the paper's network (Table 2 counts, TF-slim's mobile layout), its cells are timm's NASNet-A
cells (timm's NASNet-A Large weights give the same outputs), and its auxiliary head and drop-path work as TF-slim's."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import DropPath
from timm.models.nasnet import NASNetALarge

from trainer.errors import ConfigError
from trainer.models import create_model, get_entry, load_weights
from trainer.models.complexity import count_macs, meta_model
from trainer.models.nasnet import NORMAL_CELL, REDUCTION_CELL, NASNetA
from trainer.models.regularization import drop_path_modules, set_drop_path_rate

F = 1056 // 24  # filters per block in the first stack ("4 @ 1056")


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _aux_head_params(num_classes: int = 1000) -> int:
    # 1x1 conv 12F -> 128, BN, 4x4 conv 128 -> 768, BN, FC 768 -> classes
    return 12 * F * 128 + 2 * 128 + 128 * 768 * 4 * 4 + 2 * 768 + 768 * num_classes + num_classes


@pytest.mark.unit
def test_mobile_params_and_mult_adds_are_the_papers() -> None:
    """Table 2: 5.3 M parameters (given to 0.1 M: within 0.05 M) and 564 M mult-adds (given to 1 M; within 1.5 M,
    as the paper does not say whether it counts the 1.06 M of the classifier) for the network without its auxiliary
    head, which only training uses."""
    model = meta_model("nasnet_a_mobile", aux_logits=False)
    assert _num_params(model) / 1e6 == pytest.approx(5.3, abs=0.05)
    assert count_macs(model, 224) / 1e6 == pytest.approx(564, abs=1.5)
    # the catalogue counts as the paper does: the network without the head, the head (default build) apart
    assert get_entry("nasnet_a_mobile").params == _num_params(model)
    assert get_entry("nasnet_a_mobile").aux_params == _aux_head_params()
    assert count_macs(meta_model("nasnet_a_mobile"), 224) == count_macs(model, 224)  # eval: no auxiliary head


def _output_shapes(model: nn.Module, resolution: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    names = ["conv0", "cell_stem_0", "cell_stem_1", *model.cell_names]
    hooks = [
        getattr(model, n).register_forward_hook(lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape[1:])))
        for n in names
    ]
    try:
        count_macs(model, resolution)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


@pytest.mark.unit
def test_mobile_layout_at_224() -> None:
    """TF-slim's mobile config: 32-filter 3x3/2 stem conv (unpadded: 111 px), stem cells of F/4 and F/2 filters,
    three stacks of N=4 normal cells (6 blocks concatenated) with F, 2F, 4F filters, reduction cells (4 blocks)
    between them, numbered as TF-slim numbers them."""
    model = meta_model("nasnet_a_mobile")
    assert model.cell_names == [
        *(f"cell_{i}" for i in range(4)),
        "reduction_cell_0",
        *(f"cell_{i}" for i in range(4, 8)),
        "reduction_cell_1",
        *(f"cell_{i}" for i in range(8, 12)),
    ]
    shapes = _output_shapes(model, 224)
    assert shapes["conv0"] == (32, 111, 111)
    assert shapes["cell_stem_0"] == (4 * F // 4, 56, 56)
    assert shapes["cell_stem_1"] == (4 * F // 2, 28, 28)
    assert [shapes[f"cell_{i}"] for i in range(12)] == [
        *[(6 * F, 28, 28)] * 4,
        *[(12 * F, 14, 14)] * 4,
        *[(24 * F, 7, 7)] * 4,
    ]
    assert shapes["reduction_cell_0"] == (8 * F, 14, 14) and shapes["reduction_cell_1"] == (16 * F, 7, 7)
    assert model.num_features == 1056 and model.get_classifier().in_features == 1056


@pytest.mark.unit
def test_cells_are_figure_4() -> None:
    """Fig. 4: the normal cell's blocks are sep3+sep5, sep3+sep5, avg+identity, avg+avg, sep3+identity; the
    reduction cell's sep7+sep5, max+sep7, avg+sep5, identity+avg, max+sep3 (each block in either order)."""

    def blocks(spec) -> list[set[str]]:
        return [{spec.operations[i], spec.operations[i + 1]} for i in range(0, 10, 2)]

    assert blocks(NORMAL_CELL) == [{"sep3", "sep5"}, {"sep3", "sep5"}, {"avg3", "none"}, {"avg3"}, {"sep3", "none"}]
    assert blocks(REDUCTION_CELL) == [
        {"sep7", "sep5"},
        {"max3", "sep7"},
        {"avg3", "sep5"},
        {"none", "avg3"},
        {"max3", "sep3"},
    ]
    model = meta_model("nasnet_a_mobile")
    sep = model.cell_0.comb_iter_0_left  # ReLU-sepconv-BN-ReLU-sepconv-BN, depthwise then pointwise
    kinds = [type(m).__name__ for m in sep.children()]
    assert kinds == ["ReLU", "SeparableConv2d", "BatchNorm2d", "ReLU", "SeparableConv2d", "BatchNorm2d"]
    assert sep.separable_1.depthwise_conv2d.groups == F and sep.separable_1.depthwise_conv2d.kernel_size == (5, 5)
    # stride 2 only on the reduction cell's operations that read the cell's two inputs
    red = model.reduction_cell_0
    assert red.comb_iter_0_left.separable_1.depthwise_conv2d.stride == (2, 2)
    assert red.comb_iter_4_left.separable_1.depthwise_conv2d.stride == (1, 1)  # reads block 0's output


@pytest.fixture(scope="module")
def large_pair() -> tuple[nn.Module, nn.Module]:
    """timm's NASNet-A Large and ours assembled as it (6 @ P, skipping the reduction cell's input) at a small width
    (P = 384, stem 8, for speed), with timm's weights, in eval mode; built scriptable (timm's layer choice)."""
    torch.manual_seed(0)
    with timm.layers.set_layer_config(scriptable=True):
        reference = NASNetALarge(num_features=384, stem_size=8).eval()
        ours = NASNetA(
            cells_per_stack=6, penultimate_filters=384, stem_size=8, skip_reduction_input=True, aux_logits=False
        ).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


LARGE_INPUT = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.unit
def test_cells_are_timms_nasnet_a_large_cells(large_pair: tuple[nn.Module, nn.Module]) -> None:
    """Assembled as NASNet-A Large (6 @ P, stem 96 or 8 here, skipping the reduction cell's input), the network has
    timm's parameter count, and (at a small width, for speed) timm's weights load without a missing or unexpected
    key and give the same outputs, eager and scripted: the generic cells wire the operations exactly as timm's (and
    TF-slim's)."""
    with torch.device("meta"):
        large = NASNetA(
            cells_per_stack=6, penultimate_filters=4032, stem_size=96, skip_reduction_input=True, aux_logits=False
        )
    with torch.device("meta"):  # timm's, and the catalogue's Large (the same network plus the auxiliary head)
        counts = [_num_params(timm.create_model(n, aux_logits=False)) for n in ("nasnet_a_large",)]
        counts.append(_num_params(timm.create_model("nasnetalarge")))
    assert _num_params(large) == 88_753_150 and counts == [88_753_150, 88_753_150]

    reference, ours = large_pair
    with torch.no_grad():
        expected = reference(LARGE_INPUT)
        assert _max_diff(ours(LARGE_INPUT), expected) <= 1e-5
        assert _max_diff(torch.jit.script(ours)(LARGE_INPUT), expected) <= 1e-5


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(indices=2),
        dict(indices=[0, 3]),
        dict(indices=[0], stop_early=True),
        dict(indices=[2], stop_early=True),
        dict(indices=[1], intermediates_only=True),
    ],
)
def test_forward_intermediates_are_timms(large_pair: tuple[nn.Module, nn.Module], kwargs: dict) -> None:
    """timm's nasnetalarge `forward_intermediates`: the same levels (conv0's output, then the cells' outputs after
    the ReLU the next cell starts with) and final features, for each reading of indices and stop_early."""
    reference, ours = large_pair
    with torch.no_grad():
        got, expected = (
            ours.forward_intermediates(LARGE_INPUT, **kwargs),
            reference.forward_intermediates(LARGE_INPUT, **kwargs),
        )
    if not kwargs.get("intermediates_only"):
        assert _max_diff(got[0], expected[0]) <= 1e-5
        got, expected = got[1], expected[1]
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape and _max_diff(a, b) <= 1e-5


@pytest.mark.unit
@pytest.mark.parametrize("indices", [[0], [1], [1, 3], 1])
def test_prune_intermediate_layers_is_timms(large_pair: tuple[nn.Module, nn.Module], indices: int | list[int]) -> None:
    """Pruned to a level, the network ends there as timm's does (the cells after it removed), its `num_features`
    is that level's width, and it still scripts."""
    reference, ours = (copy.deepcopy(m) for m in large_pair)
    kept = ours.prune_intermediate_layers(indices)
    assert kept == reference.prune_intermediate_layers(indices)
    level = max(kept)
    assert ours.num_features == ours.feature_info[level]["num_chs"]
    assert hasattr(ours, "cell_11") == (level >= 3) and hasattr(ours, "cell_stem_1") == (level >= 2)
    with torch.no_grad():
        out = ours(LARGE_INPUT)
        assert out.shape[1] == ours.num_features and _max_diff(out, reference(LARGE_INPUT)) <= 1e-5
        if level < 3:  # the scripted network without the later cells (a few seconds more for the deeper ones)
            assert _max_diff(torch.jit.script(ours)(LARGE_INPUT), out) <= 1e-5


@pytest.mark.unit
def test_forward_intermediates_are_the_feature_info_levels() -> None:
    """NASNet-A Mobile's levels are what `features_only` hooks on the `feature_info` modules give, and pruning away
    the auxiliary head's cell removes the head."""
    torch.manual_seed(0)
    model = NASNetA().eval()
    maps: dict[int, torch.Tensor] = {}
    hooks = [
        model.get_submodule(info["module"]).register_forward_hook(
            lambda _m, _i, out, k=k: maps.__setitem__(k, out.clone())
        )
        for k, info in enumerate(model.feature_info)
    ]
    x = torch.randn(2, 3, 67, 67)
    with torch.no_grad():
        features = model.forward_features(x)
        for hook in hooks:
            hook.remove()
        final, levels = model.forward_intermediates(x)
    assert torch.equal(final, features) and len(levels) == len(maps) == 5
    for k, level in enumerate(levels):
        assert torch.equal(level, maps[k]), k
    model.prune_intermediate_layers([2])
    assert model.aux_head is None and model.cell_names == [f"cell_{i}" for i in range(4)]


def _inputs_of(model: nn.Module, name: str, resolution: int = 96) -> tuple[torch.Tensor, torch.Tensor, dict]:
    outputs: dict[str, torch.Tensor] = {}
    inputs: list[tuple[torch.Tensor, ...]] = []
    hooks = [
        getattr(model, n).register_forward_hook(lambda _m, _i, o, n=n: outputs.__setitem__(n, o))
        for n in model.cell_names
    ]
    hooks.append(getattr(model, name).register_forward_pre_hook(lambda _m, args: inputs.append(args)))
    try:
        count_macs(model, resolution)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs[0][0], inputs[0][1], outputs


@pytest.mark.unit
@pytest.mark.parametrize(("skip", "expected_prev"), [(False, "cell_3"), (True, "cell_2")])
def test_cell_after_a_reduction_cell(skip: bool, expected_prev: str) -> None:
    """TF-slim's skip_reduction_layer_input: Mobile (0) gives the cell after reduction_cell_0 the last normal cell as
    its previous input; Large (1) the one before it. The reduction cell itself reads cells 3 and 2."""
    model = meta_model("nasnet_a_mobile", skip_reduction_input=skip)
    x, x_prev, outputs = _inputs_of(model, "cell_4")
    assert x is outputs["reduction_cell_0"] and x_prev is outputs[expected_prev]
    x, x_prev, outputs = _inputs_of(model, "reduction_cell_0")
    assert x is outputs["cell_3"] and x_prev is outputs["cell_2"]
    assert model.cell_4.prev_mode == "factorized" and model.cell_5.prev_mode == "project"


@pytest.fixture(scope="module")
def mobile() -> nn.Module:
    torch.manual_seed(0)
    return create_model("nasnet_a_mobile", num_classes=10)


@pytest.mark.unit
def test_auxiliary_head(mobile: nn.Module) -> None:
    """TF-slim's head on the ReLU of cell 7 (the second stack's last normal cell, 14x14 at 224 px): 5x5/3 average
    pool to 4x4, 1x1 conv 128, BN, ReLU, a 4x4 conv to 768 (the remaining map), BN, ReLU, FC."""
    assert mobile.aux_cell == "cell_7"
    head = mobile.aux_head
    assert (head.pool.kernel_size, head.pool.stride) == (5, 3)
    assert head.proj.out_channels == 128 and head.proj.in_channels == 12 * F
    assert head.conv.kernel_size == (4, 4) and head.conv.out_channels == 768
    assert head.fc.out_features == 10
    maps = {}
    with torch.device("meta"):
        probe = NASNetA(num_classes=10).train()
    probe.aux_head.pool.register_forward_hook(lambda _m, _i, out: maps.__setitem__("pool", tuple(out.shape[1:])))
    main, aux = probe(torch.empty(2, 3, 224, 224, device="meta"))
    assert maps["pool"] == (12 * F, 4, 4) and main.shape == aux.shape == (2, 10)

    x = torch.randn(2, 3, 67, 67)  # the entry's min_resolution
    with torch.no_grad():
        main, aux = mobile.train()(x)
        assert main.shape == aux.shape == (2, 10)
        assert isinstance(mobile.eval()(x), torch.Tensor)
    without = meta_model("nasnet_a_mobile", aux_logits=False)
    assert without.aux_head is None and not any("aux" in n for n, _ in without.named_parameters())
    assert isinstance(without.train()(torch.empty(2, 3, 224, 224, device="meta")), torch.Tensor)


@pytest.mark.unit
def test_reset_classifier_resets_both_heads() -> None:
    with torch.device("meta"):
        model = NASNetA(num_classes=1000)
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5 and model.aux_head.fc.out_features == 5
    model.reset_classifier(0)  # a feature extractor: TF-slim builds the auxiliary head only with a classifier
    out = model.train()(torch.empty(2, 3, 96, 96, device="meta"))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1056)


@pytest.mark.unit
def test_drop_path_on_every_operation_but_the_identity() -> None:
    """None by default (the mobile config's keep prob is 1); with a rate, one DropPath per cell (16, the stem cells
    included) at TF-slim's layer-scaled rate * (l + 1) / 16, applied to the 8 non-identity operations of a cell."""
    assert drop_path_modules(meta_model("nasnet_a_mobile")) == []
    model = meta_model("nasnet_a_mobile", drop_path_rate=0.3)
    modules = drop_path_modules(model)
    assert all(isinstance(m, DropPath) for m in modules)
    tf_slim_rates = [0.3 * (i + 1) / 16 for i in range(16)]
    assert [m.drop_prob for m in modules] == pytest.approx(tf_slim_rates)
    assert modules[0] is model.cell_stem_0.drop_path and modules[-1] is model.cell_11.drop_path
    # the ScheduledDropPath callback's depth rule (rate_l = l / L * rate) is TF-slim's layer scaling
    assert set_drop_path_rate(model, 0.3) == pytest.approx(tf_slim_rates)
    calls = []
    model.cell_0.drop_path.register_forward_hook(lambda *_: calls.append(1))
    model.reduction_cell_0.drop_path.register_forward_hook(lambda *_: calls.append(2))
    model.train()(torch.empty(2, 3, 96, 96, device="meta"))
    assert calls.count(1) == 8 and calls.count(2) == 9  # normal: 2 identities of 10; reduction: 1


@pytest.mark.unit
def test_features_only_pyramid() -> None:
    with torch.device("meta"):
        model = create_model("nasnet_a_mobile", features_only=True)
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert model.feature_info.channels() == [32, 4 * F // 4, 6 * F, 12 * F, 24 * F]
    maps = model(torch.empty(1, 3, 224, 224, device="meta"))
    shapes = [tuple(m.shape[1:]) for m in maps]
    assert shapes == [(32, 111, 111), (44, 56, 56), (264, 28, 28), (528, 14, 14), (1056, 7, 7)]


@pytest.mark.unit
def test_init_is_tf_slims_fan_out_scaling(mobile: nn.Module) -> None:
    """variance_scaling_initializer(mode='FAN_OUT'): std sqrt(2 / fan_out); a depthwise conv's fan-out is its
    kernel area (one output per input channel)."""
    pointwise = mobile.cell_11.comb_iter_0_left.separable_1.pointwise_conv2d.weight
    depthwise = mobile.cell_11.comb_iter_0_left.separable_1.depthwise_conv2d.weight
    assert pointwise.std().item() == pytest.approx(math.sqrt(2 / pointwise.shape[0]), rel=0.05)
    assert depthwise.std().item() == pytest.approx(math.sqrt(2 / 25), rel=0.05)


@pytest.mark.unit
def test_cadene_port_cell_numbers_load(tmp_path: Path) -> None:
    """The Cadene port numbers NASNet-A Mobile's cells 0-3, 6-9, 12-15: its checkpoints load into cells 0-11."""
    torch.manual_seed(0)
    state = create_model("nasnet_a_mobile", aux_logits=False).state_dict()
    cadene_number = dict(enumerate([0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15]))

    def cadene(key: str) -> str:
        m = re.match(r"cell_(\d+)\.", key)
        return f"cell_{cadene_number[int(m[1])]}.{key[m.end() :]}" if m else key

    path = tmp_path / "nasnetamobile.pth"
    torch.save({cadene(k): v for k, v in state.items()}, path)
    model = create_model("nasnet_a_mobile", aux_logits=False)
    report = load_weights(model, path)
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        (dict(penultimate_filters=1000), "penultimate_filters=1000"),
        (dict(cells_per_stack=0), "cells_per_stack=0"),
        (dict(img_size=64), "img_size=64"),
        (dict(drop_path_rate=1.0), "drop_path_rate=1.0"),
    ],
)
def test_bad_arguments_raise_one_line(kwargs: dict, text: str) -> None:
    for build in (lambda: create_model("nasnet_a_mobile", **kwargs), lambda: NASNetA(**kwargs)):
        with pytest.raises(ConfigError) as exc, torch.device("meta"):
            build()
        assert "\n" not in str(exc.value) and text in str(exc.value)
