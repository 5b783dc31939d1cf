"""DenseNet, Huang, Liu, van der Maaten & Weinberger, "Densely Connected Convolutional Networks", CVPR 2017
(arXiv:1608.06993).

The ImageNet DenseNet-BC networks of Table 1: growth rate k=32 (DenseNet-161: k=48, 96 stem channels), 4k-channel
1x1 bottlenecks, compression 0.5 in the transition layers, the plain stem (7x7/2 convolution, 3x3/2 max-pool).
timm implements 121/161/169/201. Its `densenet264d` is not the paper's DenseNet-264 (deep 3-conv stem, k=48), so
`densenet264` here is registered into timm's registry from timm's own `DenseNet` class with the paper's block
configuration (6, 12, 64, 48), k=32 and the plain stem. Accuracies: Table 3, single crop (the paper also gives
10-crop errors). DenseNet-264's top-5 is marked unverified in the reference table. DenseNet-161 (k=48) is not in the
paper's Table 1 or Table 3: it comes from the authors' released models, so it has no paper accuracy here.
"""

from typing import Any

from timm.models import generate_default_cfgs, register_model
from timm.models.densenet import DenseNet

from trainer.compat import create_densenet
from trainer.models.catalogue import ModelEntry, Paper, pretrained_cfg, register

PAPER = Paper("Densely Connected Convolutional Networks", "Huang, Liu, van der Maaten, Weinberger", 2017, "1608.06993")


default_cfgs = generate_default_cfgs(
    {
        "densenet264": pretrained_cfg(
            first_conv="features.conv0",
            classifier="classifier",
            paper_ids="arXiv:1608.06993",
            paper_name=PAPER.title,
        )
    }
)


@register_model
def densenet264(pretrained: bool = False, **kwargs: Any) -> DenseNet:
    """DenseNet-264 (k=32) as in Table 1 of the paper: plain stem, blocks (6, 12, 64, 48)."""
    model_args = dict(growth_rate=32, block_config=(6, 12, 64, 48), stem_type="")
    return create_densenet("densenet264", pretrained=pretrained, **dict(model_args, **kwargs))


# name, params at 1000 classes, paper top-1 / top-5 (single crop), source
for _name, _params, _top1, _top5, _source in (
    ("densenet121", 7_978_856, 74.98, 92.29, "timm"),
    ("densenet161", 28_681_000, None, None, "timm"),
    ("densenet169", 14_149_480, 76.20, 93.15, "timm"),
    ("densenet201", 20_013_928, 77.42, 93.66, "timm"),
    ("densenet264", 33_337_704, 77.85, 93.88, "own"),
):
    register(
        ModelEntry(
            name=_name,
            builder=_name,
            family="densenet",
            paper=PAPER,
            params=_params,
            recipe="densenet",
            top1=_top1,
            top5=_top5,
            protocol="1-crop (Table 3)",
            source=_source,
            notes={
                "densenet264": (
                    "registered from timm's DenseNet class (timm's densenet264d has a deep stem and k=48); "
                    "paper top-5 unverified"
                ),
                "densenet161": "k=48: from the authors' released models, not the paper's tables (no paper accuracy)",
            }.get(_name, ""),
        )
    )
