"""Every network written here behaves as timm's own models do in the APIs timm documents (issue 20): classifier and
pooling reset, a complete `pretrained_cfg`, TorchScript, FX feature extraction, torch.export, gradient
checkpointing and `forward_intermediates`.

The networks are read from timm's registry (every entry point defined in `trainer.models`), so a network added
later is covered without edits here. Each model is built once per module, in eval mode, with drop-path on (a
`drop_path_rate` wherever the constructor takes one), at the smallest input its catalogue entries accept, batch 2. The
checks that need no real forward (the config, the shapes at the default input size) run on every network on the meta
device; the checks that run the network (scripting, tracing, export, checkpointing) run on one network per code path:
`SAME_PATH_AS` names the skipped heavier variants and the variant that covers each, and the stochastic-depth paper's
batch-wise drop-path (`drop_path_mode=batch`) runs on one network more.
"""

from __future__ import annotations

import copy
import functools
import inspect

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import FeatureInfo, create_feature_extractor, get_graph_node_names

import trainer.models  # noqa: F401  (registers our networks into timm)
from tests.helpers import slow_unless
from trainer.models.catalogue import _CATALOGUE
from trainer.models.layers import BatchDropPath
from trainer.models.regularization import drop_path_modules, set_drop_path_mode
from trainer.models.stages import StagedModel

pytestmark = pytest.mark.unit

OURS = sorted(n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith("trainer.models"))

# heavier variants whose classes, blocks and options a lighter one of the same family runs through
SAME_PATH_AS = {
    "densenet264": "timm's own DenseNet class (densenet121's code path); only the config is ours",
    "densenet_bc190_k40_cifar": "densenet_bc100_k12_cifar (same bottleneck layers and compression, another L and k)",
    "densenet_bc250_k24_cifar": "densenet_bc100_k12_cifar (same bottleneck layers and compression, another L and k)",
    "fractalnet40_cifar": "fractalnet20_cifar (same blocks, one column more)",
    "mobilenetv1_050": "mobilenetv1_025 (timm's EfficientNet, another width)",
    "mobilenetv1_075": "mobilenetv1_025 (timm's EfficientNet, another width)",
    "nasnet_a_large": "nasnet_a_mobile (same cells; skip_reduction_input is checked against timm in test_nasnet)",
    "preact_resnet1001_cifar": "preact_resnet164_cifar (same unit, 111 instead of 18 per stage)",
    "resnet32_cifar": "resnet20_cifar (same blocks and option-A shortcuts, another n)",
    "resnet44_cifar": "resnet20_cifar (same blocks and option-A shortcuts, another n)",
    "resnet56_cifar": "resnet20_cifar (same blocks and option-A shortcuts, another n)",
    "resnet110_cifar": "resnet20_cifar (same blocks and option-A shortcuts, another n)",
    "resnet1202_cifar": "resnet20_cifar (n = 200; untrained, in eval mode, its 600 unnormalised residual sums "
    "overflow to inf, so outputs cannot be compared)",
    "resnext29_16x64d_cifar": "resnext29_8x64d_cifar (same grouped bottleneck, cardinality 16)",
    "shufflenet_v1_g2_1_0": "shufflenet_v1_g3_0_25 (grouped units, another g)",
    "shufflenet_v1_g3_1_0": "shufflenet_v1_g3_0_25 (another width)",
    "shufflenet_v1_g3_1_5": "shufflenet_v1_g3_0_25 (another width)",
    "shufflenet_v1_g3_2_0": "shufflenet_v1_g3_0_25 (another width)",
    "shufflenet_v1_g4_1_0": "shufflenet_v1_g3_0_25 (grouped units, another g)",
    "shufflenet_v1_g8_1_0": "shufflenet_v1_g3_0_25 (grouped units, another g)",
    "shufflenet_v2_x1_0": "shufflenet_v2_x0_5 (another width)",
    "shufflenet_v2_x1_5": "shufflenet_v2_x0_5 (another width)",
    "shufflenet_v2_x2_0": "shufflenet_v2_x0_5 (another width; its dropout is checked in test_shufflenet)",
    "squeezenet1_0": "squeezenet1_0_complex_bypass (the same trunk with both kinds of bypass)",
    "squeezenet1_0_simple_bypass": "squeezenet1_0_complex_bypass (identity bypasses are a subset of its)",
    "wide_resnet28_10_cifar": "wide_resnet40_4_cifar (same unit, another depth and width)",
}
RUN = [n for n in OURS if n not in SAME_PATH_AS]
# the scripting, tracing and export checks: every network in RUN with timm's per-sample DropPath (where it has
# drop-path), and one with the paper's batch-wise BatchDropPath in its place
# `make test-fast` runs the checks that run a network on a few light ones (every drop-path kind but NASNet's cells among
# them) and the meta-device checks on the networks in RUN; `make test` (CI) runs every check on every network above.
FAST_RUN = {
    "darknet19",
    "densenet40_k12_cifar",
    "efficientnet_compound",
    "fractalnet20_cifar",
    "googlenet",
    "mobilenetv1_025",
    "resnet20_cifar",
    "shufflenet_v1_g3_0_25",
    "squeezenet1_0_complex_bypass",
}
RUN_TIERED = slow_unless(RUN, FAST_RUN)
OURS_TIERED = slow_unless(OURS, set(RUN))
RUN_MODES = [pytest.param(n, "row", id=n, marks=() if n in FAST_RUN else pytest.mark.slow) for n in RUN] + [
    pytest.param("resnet20_cifar", "batch", id="resnet20_cifar-batch_drop_path")
]
DROP_PATH_RATE = 0.1
BATCH = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these networks are tiny at these inputs, and on a shared machine more threads only wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smallest_input(name: str) -> int:
    """The smallest input the catalogue accepts for a network (over its entries; 32 px, the floor, otherwise)."""
    sizes = [e.min_resolution for e in _CATALOGUE.values() if e.builder == name]
    return min(sizes, default=32)


def build_kwargs(name: str) -> dict[str, float]:
    """`drop_path_rate` for every network whose constructor takes one, so that its drop-path modules are built."""
    takes_rate = "drop_path_rate" in inspect.signature(type(_meta(name))).parameters
    return {"drop_path_rate": DROP_PATH_RATE} if takes_rate else {}


def create(name: str, drop_path_mode: str = "row", **kwargs) -> nn.Module:
    """`timm.create_model` with drop-path on, in `drop_path_mode` (row: timm's DropPath; batch: BatchDropPath)."""
    return set_drop_path_mode(timm.create_model(name, **build_kwargs(name), **kwargs), drop_path_mode)


@functools.cache
def _built(name: str, drop_path_mode: str = "row") -> nn.Module:
    torch.manual_seed(0)
    return create(name, drop_path_mode).eval()


def build(name: str, drop_path_mode: str = "row") -> nn.Module:
    """A fresh copy of the network (eval mode); the tests change it in place."""
    return copy.deepcopy(_built(name, drop_path_mode))


@functools.cache
def _input(name: str) -> torch.Tensor:
    size = smallest_input(name)
    return torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(1))


def classifier_names(model: nn.Module) -> list[str]:
    names = model.pretrained_cfg["classifier"]
    return [names] if isinstance(names, str) else list(names)


# ---- 2. pretrained_cfg, on the meta device for every network -------------------------------------------------


@functools.cache
def _meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name).eval()


@pytest.mark.parametrize("name", OURS_TIERED)
def test_pretrained_cfg_is_complete(name: str) -> None:
    model = _meta(name)
    cfg = model.pretrained_cfg
    for key in ("input_size", "pool_size", "crop_pct", "interpolation", "mean", "std", "paper_ids", "paper_name"):
        assert cfg.get(key), f"{name}: pretrained_cfg has no {key}"
    params = dict(model.named_parameters())
    first = params.get(f"{cfg['first_conv']}.weight")
    assert first is not None and first.ndim == 4, f"{name}: first_conv {cfg['first_conv']} is no convolution"
    assert first.shape[1] * model.get_submodule(cfg["first_conv"]).groups == 3, f"{name}: first_conv sees no image"
    for classifier in classifier_names(model):
        weight = params.get(f"{classifier}.weight")
        assert weight is not None and weight.shape[0] == 1000, f"{name}: classifier {classifier} has no 1000 outputs"
    assert model.get_classifier() is model.get_submodule(classifier_names(model)[0])
    entries = [e for e in _CATALOGUE.values() if e.builder == name]
    for entry in entries:  # the paper the catalogue ties the network to
        assert cfg["paper_name"] == entry.paper.title
        if entry.paper.arxiv:
            assert cfg["paper_ids"] == f"arXiv:{entry.paper.arxiv}"


@pytest.mark.parametrize("name", OURS_TIERED)
def test_pool_size_is_the_feature_map_at_the_default_input(name: str) -> None:
    model = _meta(name)
    cfg = model.pretrained_cfg
    x = torch.empty(1, *cfg["input_size"], device="meta")
    features = model.forward_features(x)
    assert features.shape == (1, model.num_features, *cfg["pool_size"])
    assert isinstance(model.head_hidden_size, int)
    assert model.forward_head(features, pre_logits=True).shape == (1, model.head_hidden_size)
    assert model(x).shape == (1, 1000)


# ---- 1. classifier and pooling reset ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", RUN_TIERED)
def test_reset_classifier_and_pooling(name: str) -> None:
    model, x = build(name), _input(name)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert features.ndim == 4 and features.shape[:2] == (BATCH, model.num_features)
        assert pre_logits.shape == (BATCH, model.head_hidden_size)

        model.reset_classifier(0)  # pooled features, the head's input to its classifier
        assert torch.allclose(model(x), pre_logits, atol=1e-5)
        model.reset_classifier(0, "")  # no pooling: the unpooled feature map
        assert torch.allclose(model(x), features, atol=1e-5)
        model.reset_classifier(7, "avg")  # every classifier, auxiliary ones too, gets the new classes
        assert model(x).shape == (BATCH, 7)
        for classifier in classifier_names(model):
            assert model.get_submodule(classifier).weight.shape[0] == 7

        unpooled = create(name, num_classes=0, global_pool="").eval()
        keys = unpooled.state_dict().keys()
        unpooled.load_state_dict({k: v for k, v in _built(name).state_dict().items() if k in keys})
        assert torch.allclose(unpooled(x), features, atol=1e-5)


# ---- 3. TorchScript, FX, torch.export --------------------------------------------------------------------------

# one network per drop-path code path, which the checks below must run with its drop-path built
DROP_PATH_PATHS = {
    ("nasnet_a_mobile", "row"): "DropPath on every cell operation but the identity",
    ("inception_resnet_v1", "row"): "DropPath on the scaled residual branches",
    ("preact_resnet164_cifar", "row"): "DropPath on the pre-activation residual branches",
    ("efficientnet_compound", "row"): "timm's EfficientNet blocks' DropPath",
    ("resnet20_cifar", "batch"): "the stochastic-depth paper's BatchDropPath",
}


def test_drop_path_is_built_for_the_checks() -> None:
    """The networks the checks run carry drop-path modules with a rate (or FractalNet's sampler has one)."""
    for (name, mode), where in DROP_PATH_PATHS.items():
        modules = drop_path_modules(_built(name, mode))
        kind = BatchDropPath if mode == "batch" else timm.layers.DropPath
        assert modules and all(type(m) is kind and m.drop_prob > 0 for m in modules), f"{name}: no {where}"
    assert _built("fractalnet20_cifar").path_sampler.drop_path_rate == DROP_PATH_RATE  # FractalNet's join sampler


@pytest.mark.parametrize(("name", "mode"), RUN_MODES)
def test_torchscript(name: str, mode: str) -> None:
    x = _input(name)
    with timm.layers.set_layer_config(scriptable=True):
        model = create(name, mode).eval()
    model.load_state_dict(_built(name, mode).state_dict())
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


@pytest.mark.parametrize(("name", "mode"), RUN_MODES)
def test_fx_feature_extraction(name: str, mode: str) -> None:
    model, x = build(name, mode), _input(name)
    _, eval_nodes = get_graph_node_names(model)
    extractor = create_feature_extractor(model, return_nodes={eval_nodes[-1]: "out"}).eval()
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(extractor(x)["out"], expected, atol=1e-5)
        assert torch.allclose(torch.jit.script(extractor)(x)["out"], expected, atol=1e-5)


@pytest.mark.parametrize(("name", "mode"), RUN_MODES)
def test_torch_export(name: str, mode: str) -> None:
    model, x = build(name, mode), _input(name)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x), atol=1e-5)


# ---- 4. gradient checkpointing ---------------------------------------------------------------------------------


def _outputs_and_grads(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(2)  # dropout and drop-path draw the same with and without checkpointing
    model.zero_grad(set_to_none=True)
    out = model(x)
    outs = list(out) if isinstance(out, tuple) else [out]
    sum(o.square().mean() for o in outs).backward()
    return [o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", RUN_TIERED)
def test_grad_checkpointing(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpointing happens (counted through torch.utils.checkpoint.checkpoint, which timm's `checkpoint` and
    `checkpoint_seq` call): each segment with parameters runs in the forward pass and again in the backward pass, and
    the outputs and gradients are those without checkpointing."""
    segments, runs = [], []
    real_checkpoint = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(function, *args, **kwargs):
        def run(*inputs, **kw):
            runs.append(function)
            return function(*inputs, **kw)

        segments.append(function)
        return real_checkpoint(run, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    model, x = build(name).train(), _input(name)
    model.apply(lambda m: setattr(m, "momentum", 0.0) if isinstance(m, nn.BatchNorm2d) else None)  # stats fixed
    plain_out, plain_grads = _outputs_and_grads(model, x)
    assert not segments
    model.set_grad_checkpointing(True)
    ckpt_out, ckpt_grads = _outputs_and_grads(model, x)
    assert segments, f"{name}: set_grad_checkpointing(True) checkpointed nothing"
    for segment in segments:  # recomputed in the backward pass (a segment without parameters may need nothing)
        if not isinstance(segment, nn.Module) or any(True for _ in segment.parameters()):
            assert runs.count(segment) == 2, f"{name}: {type(segment).__name__} is not recomputed"
    for a, b in zip(plain_out, ckpt_out, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert plain_grads.keys() == ckpt_grads.keys() and plain_grads
    for key, grad in plain_grads.items():
        assert torch.allclose(grad, ckpt_grads[key], atol=1e-5, rtol=1e-4), key


# ---- 5. forward_intermediates ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RUN_TIERED)
def test_forward_intermediates(name: str) -> None:
    model, x = build(name), _input(name)
    levels = model.feature_info
    if isinstance(levels, FeatureInfo):  # timm's own classes (EfficientNet) keep theirs as a FeatureInfo
        levels = levels.info
    n = len(levels)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x), atol=1e-5)
        assert len(maps) == n
        for level, fmap in zip(levels, maps, strict=True):
            assert fmap.shape[:2] == (BATCH, level["num_chs"])
        widths = [fmap.shape[-1] for fmap in maps]
        assert widths == sorted(widths, reverse=True)  # the levels go down in resolution
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(last2) == 2 and all(torch.allclose(a, b) for a, b in zip(last2, maps[-2:], strict=True))
        picked = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        assert torch.allclose(picked[0], maps[0]) and torch.allclose(picked[1], maps[-1])
        first = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert len(first) == 1 and torch.allclose(first[0], maps[0])
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[0]
        assert normed.shape == maps[-1].shape
        if isinstance(model, StagedModel) and type(model).final_norm is not StagedModel.final_norm:
            assert torch.allclose(normed, final, atol=1e-5)  # the final norm applied to the last level
        if isinstance(model, StagedModel):  # stop_early: the trunk ends at the last level taken
            early, _ = model.forward_intermediates(x, indices=[0], stop_early=True)
            assert torch.allclose(early, maps[0])
