"""MobileNet v1, Howard, Zhu, Chen, Kalenichenko, Wang, Weyand, Andreetto & Adam, "MobileNets: Efficient
Convolutional Neural Networks for Mobile Vision Applications", 2017 (arXiv:1704.04861).

timm builds the paper's network (Table 1: a 3x3/2 stem and 13 depthwise-separable blocks, BN + ReLU after every
convolution) with `_gen_mobilenet_v1` in timm/models/efficientnet.py, but registers only width 1.0 (and 1.25).
The paper's other width multipliers (alpha = 0.75, 0.5, 0.25, Sec. 3.3) are registered here into timm's registry
from that same builder with `channel_multiplier=alpha`: every layer's channels, the stem's included, are scaled
(32 * 0.25 = 8 ... 1024 * 0.25 = 256; all multiples of 8, so timm's rounding leaves them exact), as in the authors'
TF-slim release. timm uses ReLU6 as TF-slim does; the paper says ReLU.

The resolution multiplier (rho, Sec. 3.4) changes the input, not the network: `mobilenet_v1_<width>_<resolution>`
entries of one width share one builder and differ only in `resolution` (and so in MACs). The paper reports top-1
(no top-5) in Table 6 (widths at 224) and Table 7 (resolutions at width 1.0); the other nine combinations appear only
in its Fig. 4/5 plots, so their `top1` is None. Mult-adds the paper reports (millions), which the tests compare:
Table 6: 1.0: 569, 0.75: 325, 0.5: 149, 0.25: 41 (at 224); Table 7: 224: 569, 192: 418, 160: 290, 128: 186 (at 1.0).
Eval crop 0.875 (TF-slim's inception preprocessing, also its [-1, 1] input scaling: timm's Inception mean/std).
"""

from typing import Any

from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.efficientnet import EfficientNet

from trainer.compat import gen_mobilenet_v1
from trainer.models.catalogue import ModelEntry, Paper, pretrained_cfg, register

PAPER = Paper(
    "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
    "Howard, Zhu, Chen, Kalenichenko, Wang, Weyand, Andreetto, Adam",
    2017,
    "1704.04861",
)


def _cfg() -> dict[str, Any]:
    # timm's mobilenetv1_100 normalises with the Inception mean/std; the other widths follow it
    return pretrained_cfg(
        mean=IMAGENET_INCEPTION_MEAN,
        std=IMAGENET_INCEPTION_STD,
        first_conv="conv_stem",
        classifier="classifier",
        paper_ids="arXiv:1704.04861",
        paper_name=PAPER.title,
    )


default_cfgs = generate_default_cfgs({"mobilenetv1_075": _cfg(), "mobilenetv1_050": _cfg(), "mobilenetv1_025": _cfg()})


@register_model
def mobilenetv1_075(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """MobileNet v1, width multiplier 0.75."""
    return gen_mobilenet_v1("mobilenetv1_075", 0.75, pretrained=pretrained, **kwargs)


@register_model
def mobilenetv1_050(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """MobileNet v1, width multiplier 0.5."""
    return gen_mobilenet_v1("mobilenetv1_050", 0.5, pretrained=pretrained, **kwargs)


@register_model
def mobilenetv1_025(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """MobileNet v1, width multiplier 0.25."""
    return gen_mobilenet_v1("mobilenetv1_025", 0.25, pretrained=pretrained, **kwargs)


# width tag -> (timm builder, params at 1000 classes)
WIDTHS = {
    "100": ("mobilenetv1_100", 4_231_976),
    "075": ("mobilenetv1_075", 2_585_560),
    "050": ("mobilenetv1_050", 1_331_592),
    "025": ("mobilenetv1_025", 470_072),
}
RESOLUTIONS = (224, 192, 160, 128)
# (width tag, resolution) -> the paper's top-1 (Table 6: widths at 224; Table 7: resolutions at width 1.0)
PAPER_TOP1 = {
    ("100", 224): 70.6,
    ("075", 224): 68.4,
    ("050", 224): 63.7,
    ("025", 224): 50.6,
    ("100", 192): 69.1,
    ("100", 160): 67.2,
    ("100", 128): 64.4,
}
# the same tables' mult-adds, millions
PAPER_MULT_ADDS = {
    ("100", 224): 569,
    ("075", 224): 325,
    ("050", 224): 149,
    ("025", 224): 41,
    ("100", 192): 418,
    ("100", 160): 290,
    ("100", 128): 186,
}

for _width, (_builder, _params) in WIDTHS.items():
    for _resolution in RESOLUTIONS:
        _top1 = PAPER_TOP1.get((_width, _resolution))
        register(
            ModelEntry(
                name=f"mobilenet_v1_{_width}_{_resolution}",
                builder=_builder,
                family="mobilenet_v1",
                paper=PAPER,
                params=_params,
                recipe="mobilenet_v1",
                resolution=_resolution,
                top1=_top1,
                protocol="1-crop (Table 6/7)",
                notes="" if _top1 is not None else "the paper plots this width/resolution (Fig. 4/5) without a number",
            )
        )
