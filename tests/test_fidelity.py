"""Paper fidelity, second pass (issue 19): one test per point, each checking the value on the built model or the
composed config against the paper (or the paper's closed form), never against the YAML text."""

from __future__ import annotations

import importlib.util
from argparse import Namespace
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torchvision.transforms import InterpolationMode

from tests.helpers import CONF_DIR, ROOT, compose_config, ffcv_or_skip
from trainer.builders import build_model, check_recipe
from trainer.config import register_configs
from trainer.data.batch_augment import BatchAugment, needs_batch_augment, rotate
from trainer.data.transforms import build_train_transform
from trainer.models import get_entry
from trainer.models.complexity import complexity, meta_model
from trainer.models.regularization import drop_path_modules

RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))


def _augment(cfg) -> dict:
    return OmegaConf.to_container(cfg.augment, resolve=True)


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fidelity_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# 1. BN-Inception's own recipe (Ioffe & Szegedy 2015, Sec. 4.2-4.2.2) -----------------------------------------------


@pytest.mark.unit
def test_bn_inception_trains_with_its_own_papers_recipe() -> None:
    assert get_entry("bn_inception").recipe == "bn_inception"
    cfg = compose_config(["recipe=bn_inception"])
    assert (
        cfg.model.name == "bn_inception"
        and "bn_inception" not in compose_config(["recipe=inception_v3"]).recipe_info.families
    )
    # SGD with momentum at mini-batch 32; BN-x30: 30 x Inception's initial 0.0015 (Sec. 4.2.2)
    assert (cfg.optim.opt, cfg.optim.ref_batch_size, cfg.data.batch_size) == ("sgd", 32, 32) and cfg.optim.momentum > 0
    assert cfg.optim.lr == pytest.approx(30 * 0.0015)
    # L2 reduced by a factor of 5 from Inception's (GoogLeNet's 2e-4, as recipes/googlenet.yaml reads it)
    assert cfg.optim.weight_decay == pytest.approx(compose_config(["recipe=googlenet"]).optim.weight_decay / 5)
    # no dropout, no label smoothing, no gradient clipping, no auxiliary loss, not RMSProp (Inception v3's)
    assert cfg.model.drop_rate == 0 and cfg.loss.label_smoothing == 0 and not cfg.loss.aux_weights
    assert cfg.trainer.get("gradient_clip_val") is None
    # reduced photometric distortions: weaker than the Inception crops' colour jitter on every channel
    inception = compose_config(["augment=inception"]).augment.color_jitter
    assert all(0 <= ours < theirs for ours, theirs in zip(cfg.augment.color_jitter, inception, strict=True))
    # the decay 6 times faster than GoogLeNet's 4% every 8 epochs: after 8 epochs the lr has decayed 0.96^6
    optimizer = instantiate(cfg.optim, global_batch_size=32)(nn.Linear(2, 2))
    scheduler = instantiate(cfg.sched)(optimizer, num_epochs=cfg.trainer.max_epochs, updates_per_epoch=3)
    scheduler.step_update(8 * 3)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(30 * 0.0015 * 0.96**6)
    # and the recipe is the one the model is built and checked with
    with torch.device("meta"):
        model = build_model(compose_config(["recipe=bn_inception", "data.resolution=224"]), num_classes=1000)
    check_recipe(cfg, model)


# 2. EfficientNet's batch norm (Tan & Le 2019, Sec. 5.2: momentum 0.99 in TensorFlow's terms, epsilon 1e-3) -------


@pytest.mark.unit
@pytest.mark.parametrize(("name", "kwargs"), [("efficientnet_b0", {}), ("efficientnet_compound", {"phi": 1.0})])
def test_efficientnet_batch_norm_is_the_papers(name: str, kwargs: dict) -> None:
    norms = [m for m in meta_model(name, **kwargs).modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    # TensorFlow's decay d keeps d of the running average; PyTorch's momentum is the new batch's weight, 1 - d
    assert [m.momentum for m in norms] == pytest.approx([1 - 0.99] * len(norms))
    assert [m.eps for m in norms] == pytest.approx([1e-3] * len(norms))


# 3. Stochastic depth's linear rule over all L blocks (Huang et al. 2016, Eq. 4) ---------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(("name", "stages"), [("resnet50", (3, 4, 6, 3)), ("resnet152", (3, 8, 36, 3))])
def test_stochastic_depth_survival_is_the_linear_rule_over_every_block(name: str, stages: tuple[int, ...]) -> None:
    cfg = compose_config([f"model={name}", "model.drop_path_rate=0.5", "model.drop_path_mode=batch"])
    with torch.device("meta"):
        model = build_model(cfg, num_classes=1000)
    num_blocks = sum(stages)  # He et al. 2016, Table 1
    final = 0.5  # p_L
    expected = [1 - (block / num_blocks) * (1 - final) for block in range(1, num_blocks + 1)]
    modules = drop_path_modules(model)
    assert [m.survival_prob for m in modules] == pytest.approx(expected)
    if name == "resnet50":
        assert modules[0].survival_prob == pytest.approx(0.96875)  # 1 - (1 / 16) * 0.5: the first block drops too
    # one per residual block, on the block itself
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    assert [b.drop_path for b in blocks] == modules


# 4. AlexNet's crop (Krizhevsky et al. 2012, Sec. 2 and 4.1), on both loaders ------------------------------------


def _column_image(width: int = 512, height: int = 256) -> Image.Image:
    """Red = column / 2: a crop's red values tell which columns of the source it came from."""
    red = np.repeat((np.arange(width) // 2).astype(np.uint8)[None, :], height, axis=0)
    return Image.fromarray(np.stack([red, np.zeros_like(red), np.zeros_like(red)], -1))


@pytest.mark.unit
def test_alexnet_crop_is_the_central_square_of_the_shorter_side() -> None:
    augment = {**_augment(compose_config(["recipe=alexnet"])), "lighting_std": 0.0}  # colour noise off: red = column
    assert augment["crop"] == "center_random" and augment["resize"] == 256 and augment["hflip"] == 0.5
    folder = build_train_transform(augment, resolution=224, mean=(0.0,) * 3, std=(1.0,) * 3, interpolation="bilinear")
    squash = build_train_transform(
        {**augment, "crop": "squash_random"}, resolution=224, mean=(0.0,) * 3, std=(1.0,) * 3, interpolation="bilinear"
    )
    image = _column_image()  # 512 x 256: shorter side already 256; the central 256 x 256 is columns 128..383
    torch.manual_seed(0)
    for _ in range(8):
        red = folder(image)[0] * 255
        # a 224-wide crop of the central square: red in [64, 192), spanning 224 columns = 112 levels
        assert red.min() >= 64 - 1 and red.max() <= 192 and red[0].max() - red[0].min() == pytest.approx(111, abs=1.5)
        squashed = squash(image)[0] * 255  # the whole width squashed to 256: 224 / 256 of 512 columns
        assert squashed[0].max() - squashed[0].min() == pytest.approx(224 * 2 / 2 - 1, abs=3)


@pytest.mark.unit
@pytest.mark.slow  # importing ffcv (numba) takes ~10 s on a shared CPU
def test_alexnet_crop_on_ffcv_is_the_central_square_of_the_shorter_side() -> None:
    # the decoder's crop in the stored image, for the picture above (height 256, width 512)
    ffcv_or_skip()
    augment = _augment(compose_config(["recipe=alexnet"]))
    from trainer.data.ffcv.ops import CenterRandomCropRGBImageDecoder, _center_random_crop, train_decoder

    decoder = train_decoder(augment, 224, resolution=224)
    assert isinstance(decoder, CenterRandomCropRGBImageDecoder)
    np.random.seed(0)
    for _ in range(50):
        i, j, h, w = _center_random_crop(256, 512, decoder.scale, decoder.ratio)
        assert h == w == 224 and 0 <= i <= 256 - 224 and 128 <= j <= 384 - 224


# 5. Parameter counts as the papers count them: the inference network, auxiliary heads apart ---------------------


@pytest.mark.unit
@pytest.mark.slow  # NASNet and GoogLeNet measured several ways: ~10 s
def test_params_are_the_inference_networks_with_the_aux_heads_apart(capsys) -> None:
    # GoogLeNet Table 1 sums to about 6.8 M (its conv1 as a separable 7x7; the plain 7x7 of Fig. 3: 7.0 M);
    # NASNet-A Table 2: Mobile 5.3 M, Large 88.9 M (both given to 0.1 M)
    for name, paper_m, tolerance in (("googlenet", 6.8, 0.25), ("nasnet_a_mobile", 5.3, 0.05)):
        entry = get_entry(name)
        measured = complexity(name, 224)
        assert (measured.params, measured.aux_params) == (entry.params, entry.aux_params), name
        assert entry.params / 1e6 == pytest.approx(paper_m, abs=tolerance) and entry.aux_params > 0, name
        no_aux = meta_model(name, aux_logits=False)
        assert sum(p.numel() for p in no_aux.parameters()) == entry.params, name
    assert get_entry("nasnet_a_large").params / 1e6 == pytest.approx(88.9, abs=0.2)
    assert get_entry("resnet50").aux_params == 0

    from trainer.models.__main__ import main

    main(["googlenet"])
    row = next(line for line in capsys.readouterr().out.splitlines() if "│ googlenet " in line)
    cells = [c.strip() for c in row.split("│")]
    assert "7.00" in cells and "6.38" in cells  # params (M), aux (M)

    profile = _script("profile_model")
    args = Namespace(resolution=96, layers=False, latency=False, train_batch=1, device="cpu")
    result = profile.profile("nasnet_a_mobile", args)
    assert (result["params"], result["aux_params"]) == (get_entry("nasnet_a_mobile").params, 2_411_240)

    from trainer.hub import _card

    data = {"resolution": 224, "crop_ratio": 0.875, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    config = {"model": {"name": "googlenet", "kwargs": {}}, "data": {**data, "sample": True}}
    with torch.device("meta"):
        model = meta_model("googlenet")
    card = _card(
        config=config,
        architecture="googlenet",
        kind="raw",
        model=model,
        results=None,
        curves=False,
        license="mit",
        repo_id=None,
        own=True,
    )
    assert "- parameters: 7.00 M (auxiliary heads, training only: 6.38 M more)" in card


# 6. Catalogue facts ------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_catalogue_facts_are_the_papers() -> None:
    # ResNeXt (Xie et al. 2017): Table 3 ResNeXt-101 (32x4d) 21.2% top-1 error; Table 4 (64x4d) 20.4 / 5.3%, 224 crop
    assert get_entry("resnext101_32x4d").top1 == pytest.approx(100 - 21.2)
    assert sum(p.numel() for p in meta_model("resnext101_32x4d").parameters()) == get_entry("resnext101_32x4d").params
    wide = get_entry("resnext101_64x4d")
    assert (wide.top1, wide.top5) == (pytest.approx(100 - 20.4), pytest.approx(100 - 5.3))
    assert (
        get_entry("resnext101_32x8d").top1 is None
        and "not a network of the paper" in get_entry("resnext101_32x8d").notes
    )
    # ResNet-18/34: the built network has projection shortcuts where the width grows; the entries say so
    model = meta_model("resnet18")
    assert isinstance(model.layer2[0].downsample[0], nn.Conv2d)  # option B, not option A's zero-padding
    for name in ("resnet18", "resnet34"):
        assert "option B" in get_entry(name).notes and "option A" in get_entry(name).notes
    # DenseNet-161: from the released models, no paper figure; Darknet-53: YOLOv3 Table 2 at 256 px
    assert get_entry("densenet161").top1 is None and "released" in get_entry("densenet161").notes
    darknet53 = get_entry("darknet53")
    assert (darknet53.top1, darknet53.top5, darknet53.resolution) == (77.2, 93.8, 256)
    # Inception v3: the built network is TF-slim's (a 5x5 branch in Mixed_5b; no BN on the aux head's FC)
    inception = meta_model("inception_v3", aux_logits=True)
    assert inception.Mixed_5b.branch5x5_2.conv.kernel_size == (5, 5)
    assert isinstance(inception.AuxLogits.fc, nn.Linear)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in inception.AuxLogits.modules())
    assert "TF-slim" in get_entry("inception_v3").notes and "BN-auxiliary" in get_entry("inception_v3").notes


# 7. A recipe picks its paper's model -------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.slow  # every recipe composed: ~15 s
def test_every_recipe_alone_selects_its_papers_model() -> None:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for recipe in RECIPES:
            cfg = compose("train", overrides=[f"recipe={recipe}"])
            assert cfg.model.name == cfg.recipe_info.model, recipe
            assert get_entry(cfg.model.name).family in cfg.recipe_info.families, recipe


@pytest.mark.unit
def test_a_recipe_alone_selects_its_papers_model_and_model_overrides_it() -> None:
    # DenseNet (Huang et al. 2017): the recipe's paper model is DenseNet-121 (its Table 3's first row)
    assert compose_config(["recipe=densenet"]).model.name == "densenet121"
    assert compose_config(["recipe=densenet", "model=resnet18"]).model.name == "resnet18"
    assert compose_config(["model=resnet18", "recipe=densenet"]).model.name == "resnet18"  # in either order


@pytest.mark.unit
def test_recipe_inception_v3_alone_builds() -> None:
    # on an ImageNet-layout folder (the resolution follows the model: 299); the 32-px sample set would need
    # data.resolution=299 for the auxiliary head
    cfg = compose_config(["recipe=inception_v3", "data=imagefolder", "data.root=/nowhere"])
    with torch.device("meta"):
        model = build_model(cfg, num_classes=1000)
    check_recipe(cfg, model)  # aux_logits on the paper's model: no error
    assert model.aux_logits


# 8. Darknet-19's augmentation (YOLO9000 Sec. 3), on both loaders ------------------------------------------------


@pytest.mark.unit
def test_darknet19_augmentation_has_rotations_and_hsv_shifts() -> None:
    augment = _augment(compose_config(["recipe=darknet19"]))
    folder = build_train_transform(augment, resolution=64, mean=(0.0,) * 3, std=(1.0,) * 3, interpolation="bilinear")
    steps = {type(t): t for t in folder.transforms}
    assert T.RandomResizedCrop in steps  # random crops
    rotation = steps[T.RandomRotation]
    assert list(rotation.degrees) == [-7.0, 7.0]  # Darknet's angle=7
    jitter = steps[T.ColorJitter]
    # exposure (brightness) and saturation factors in [0.75, 1 / 0.75]; hue shifted by up to 0.1; contrast untouched
    assert jitter.brightness == pytest.approx((0.75, 1 / 0.75)) and jitter.saturation == pytest.approx((0.75, 1 / 0.75))
    assert jitter.hue == pytest.approx((-0.1, 0.1)) and jitter.contrast is None

    # FFCV: what its decoders do not do runs batched, with the same ranges, and the rotation is torchvision's
    assert needs_batch_augment({"rotation": 7.0})
    batch = BatchAugment(augment, resolution=64, mean=(0.0,) * 3, std=(1.0,) * 3)
    assert batch.rotation == 7.0
    assert batch.jitter == [
        pytest.approx((0.75, 1 / 0.75)),
        None,
        pytest.approx((0.75, 1 / 0.75)),
        pytest.approx((-0.1, 0.1)),
    ]
    torch.manual_seed(0)
    images = torch.rand(3, 3, 48, 64)
    angles = torch.tensor([7.0, -7.0, 3.0])
    ours = rotate(images, angles)
    for image, angle, rotated in zip(images, angles, ours, strict=True):
        reference = TF.rotate(image, float(angle), interpolation=InterpolationMode.BILINEAR, fill=0)
        assert torch.allclose(rotated[:, 8:-8, 8:-8], reference[:, 8:-8, 8:-8], atol=1e-4)
    out = batch(torch.full((8, 3, 64, 64), 128, dtype=torch.uint8))
    assert out.shape == (8, 3, 64, 64) and torch.isfinite(out).all()
    # the batched pipeline does rotate: with the rotation alone, a horizontal bar comes out tilted (its rows change)
    rotation_only = BatchAugment({"rotation": 7.0}, resolution=64, mean=(0.0,) * 3, std=(1.0,) * 3)
    bars = torch.zeros(8, 3, 64, 64, dtype=torch.uint8)
    bars[:, :, 30:34, 8:56] = 255
    rotated = rotation_only(bars)
    assert not torch.allclose(rotated, bars.float() / 255, atol=0.02)
    assert rotated.sum(dim=(1, 2, 3)).min() > 0  # the bar is still in the frame
