"""EfficientNet, Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019
(arXiv:1905.11946).

B0-B7 are timm's `tf_efficientnet_b*`: the paper's networks with TensorFlow's "SAME" padding and BN epsilon (1e-3),
the form the official weights were trained in, built with the paper's BN momentum (Sec. 5.2: 0.99 in TensorFlow's
convention, 0.01 in PyTorch's; timm's default would be 0.1). Each entry keeps the authors' hand-set width / depth /
resolution / dropout (the paper's Table 2 models; the official `efficientnet_params`), not the pure compound
formula: B1-B7 were rounded by hand (B1 is width 1.0, depth 1.1 at 240 px, where phi=1 of the formula gives
1.1 / 1.2 / 258 px).
Entries also carry the paper's head dropout (0.2 ... 0.5) and drop-connect rate 0.2 (Sec. 5.2) as model kwargs.
Eval: bicubic resize and centre crop resolution / (resolution + 32), the official preprocessing's CROP_PADDING.

`efficientnet(phi)` is compound scaling as code (Sec. 3.3): depth d = alpha^phi, width w = beta^phi,
resolution r = gamma^phi, built with timm's own `_gen_efficientnet`, whose rounding is the paper's: channels go to
the nearest multiple of 8 (never below 90 % of the exact value; timm's `round_channels` = the official
`round_filters`), stage repeats are rounded up (`ceil`, the official `round_repeats`), the stem (32) and head (1280)
are scaled as the official code does. Resolution is round(224 * gamma^phi). Dropout follows the B0-B7 table at the
nearest integer phi (clamped to 0..7): the paper publishes dropout only for those eight models.

`efficientnet_compound` is the same builder as a catalogue model, so that Hydra can select it: `model=
efficientnet_compound +model.kwargs.phi=1 ...` (phi, alpha, beta, gamma and `base_resolution` are its constructor
arguments; its data defaults, resolution and crop, follow from them). `base_resolution` is B0's 224 px; a study on
a small data set scales from that set's own size (the sample set's 32 px) instead.
"""

import math
from collections.abc import Mapping
from typing import Any

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.efficientnet import EfficientNet

from trainer.compat import BN_EPS_TF_DEFAULT, gen_efficientnet
from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, register

BASE_RESOLUTION = 224  # B0
DROPOUT = (0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5, 0.5)  # head dropout of B0..B7
DROP_CONNECT = 0.2  # Sec. 5.2: stochastic depth, survival probability 0.8, for every model
# Sec. 5.2: "batch norm momentum 0.99", TensorFlow's decay of the running averages; PyTorch's momentum is the weight
# of the new batch, 1 - 0.99 (timm's default is PyTorch's 0.1). Epsilon 1e-3 is timm's tf_ form (BN_EPS_TF_DEFAULT).
BN_MOMENTUM = 0.01  # 1 - 0.99


PAPER = Paper("EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", "Tan, Le", 2019, "1905.11946")


def _cfg(resolution: int) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, resolution, resolution),
        "pool_size": (math.ceil(resolution / 32),) * 2,
        "crop_pct": resolution / (resolution + 32),
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv_stem",
        "classifier": "classifier",
        "paper_ids": "arXiv:1905.11946",
        "paper_name": PAPER.title,
    }


def efficientnet(
    phi: float,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    num_classes: int = 1000,
    base_resolution: int = BASE_RESOLUTION,
    **kwargs: Any,
) -> tuple[nn.Module, int]:
    """EfficientNet-B0 scaled by the compound coefficient `phi` (Sec. 3.3, Eq. 3): (model, input resolution).

    alpha, beta, gamma: the depth, width and resolution bases (the paper's grid search on B0 at phi=1 found
    1.2, 1.1, 1.15, with alpha * beta^2 * gamma^2 ~= 2). base_resolution: phi=0's input size (B0: 224).
    kwargs go to timm's EfficientNet (e.g. `drop_rate`).
    """
    resolution = compound_resolution(phi, alpha, beta, gamma, base_resolution)
    kwargs.setdefault("drop_rate", DROPOUT[min(round(phi), len(DROPOUT) - 1)])
    kwargs.setdefault("drop_path_rate", DROP_CONNECT)
    kwargs.setdefault("bn_eps", BN_EPS_TF_DEFAULT)  # the TF form, as tf_efficientnet_b*
    kwargs.setdefault("bn_momentum", BN_MOMENTUM)
    kwargs.setdefault("pad_type", "same")
    model = gen_efficientnet(
        f"efficientnet_phi{phi:g}",
        channel_multiplier=beta**phi,
        depth_multiplier=alpha**phi,
        num_classes=num_classes,
        **{"pretrained_cfg": kwargs.pop("pretrained_cfg", None) or _cfg(resolution), **kwargs},
    )
    return model, resolution


def compound_resolution(
    phi: float = 0.0,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    base_resolution: int = BASE_RESOLUTION,
) -> int:
    """round(base_resolution * gamma^phi); phi < 0, or a base below 1 (Eq. 3), is a one-line ConfigError."""
    if not phi >= 0:
        raise ConfigError(f"efficientnet: phi must be >= 0, got {phi}")
    for arg, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not value >= 1:
            raise ConfigError(f"efficientnet: {arg} must be >= 1 (Eq. 3), got {value}")
    if not base_resolution >= 1:
        raise ConfigError(f"efficientnet: base_resolution must be >= 1 px, got {base_resolution}")
    return round(base_resolution * gamma**phi)


default_cfgs = generate_default_cfgs({"efficientnet_compound": _cfg(BASE_RESOLUTION)})


@register_model
def efficientnet_compound(
    pretrained: bool = False,
    phi: float = 0.0,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    base_resolution: int = BASE_RESOLUTION,
    **kwargs: Any,
) -> EfficientNet:
    """`efficientnet(phi, alpha, beta, gamma)` as a timm model (no weights: every scaled network is new)."""
    # loading an export (timm.create_model("local-dir:...", pretrained=True)) passes the export's pretrained_cfg,
    # which names the weights file; a fresh network carries the cfg of its own resolution
    model = efficientnet(phi, alpha, beta, gamma, base_resolution=base_resolution, pretrained=pretrained, **kwargs)[0]
    # the registered name, not the internal variant's: an export (config.json) must name a model timm can rebuild,
    # and timm's factory records phi, alpha, beta, gamma as the arguments to rebuild it with
    model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, "architecture": "efficientnet_compound"}
    return model


def compound_data_defaults(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The input a compound-scaled network expects: resolution round(base * gamma^phi), and the B0-B7 eval crop
    r / (r + 32) with the 32 px padding scaled by base / 224 (at the sample set's 32 px base, 32 px of padding would
    cut away half of each digit)."""
    names = ("phi", "alpha", "beta", "gamma", "base_resolution")
    given = {k: kwargs[k] for k in names if kwargs.get(k) is not None}
    resolution = compound_resolution(**given)
    padding = 32 * given.get("base_resolution", BASE_RESOLUTION) / BASE_RESOLUTION
    return {"resolution": resolution, "crop_ratio": resolution / (resolution + padding)}


# B<i>: params at 1000 classes, resolution, paper top-1 / top-5 (Table 2)
for _i, (_params, _resolution, _top1, _top5) in enumerate(
    (
        (5_288_548, 224, 77.1, 93.3),
        (7_794_184, 240, 79.1, 94.4),
        (9_109_994, 260, 80.1, 94.9),
        (12_233_232, 300, 81.6, 95.7),
        (19_341_616, 380, 82.9, 96.4),
        (30_389_784, 456, 83.6, 96.7),
        (43_040_704, 528, 84.0, 96.8),
        (66_347_960, 600, 84.3, 97.0),
    )
):
    register(
        ModelEntry(
            name=f"efficientnet_b{_i}",
            builder=f"tf_efficientnet_b{_i}",
            family="efficientnet",
            paper=PAPER,
            params=_params,
            recipe="efficientnet",
            resolution=_resolution,
            crop_ratio=_resolution / (_resolution + 32),
            interpolation="bicubic",
            top1=_top1,
            top5=_top5,
            protocol="1-crop (Table 2)",
            notes=(
                "timm's tf_efficientnet (TF 'SAME' padding); BN momentum 0.99 (PyTorch's 0.01) and eps 1e-3, dropout "
                "and drop-connect as the paper (Sec. 5.2)"
            ),
            kwargs={"drop_rate": DROPOUT[_i], "drop_path_rate": DROP_CONNECT, "bn_momentum": BN_MOMENTUM},
        )
    )

register(
    ModelEntry(
        name="efficientnet_compound",
        builder="efficientnet_compound",
        family="efficientnet",
        paper=PAPER,
        params=5_288_548,  # phi=0: B0
        recipe="efficientnet",
        resolution=BASE_RESOLUTION,
        crop_ratio=BASE_RESOLUTION / (BASE_RESOLUTION + 32),
        interpolation="bicubic",
        protocol="1-crop",
        source="own",
        notes="compound scaling (Sec. 3.3): kwargs phi, alpha, beta, gamma, base_resolution; phi=0 is B0",
        data_defaults_from_kwargs=compound_data_defaults,
    )
)
