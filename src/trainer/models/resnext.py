"""ResNeXt, Xie, Girshick, Dollar, Tu & He, "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017
(arXiv:1611.05431).

timm's `resnext*` models are the paper's form (c) blocks (grouped 3x3 convolution, cardinality x bottleneck width) on
the ResNet-50/101 layouts. Accuracy: ResNeXt-50 (32x4d) from Table 3 (22.2 % top-1 error, 1 crop at 224); the
paper's ResNeXt-101 numbers (Table 5) are 320/299-px crops, not listed in the reference table, so left out.
"""

from trainer.models.catalogue import ModelEntry, Paper, register

PAPER = Paper(
    "Aggregated Residual Transformations for Deep Neural Networks", "Xie, Girshick, Dollar, Tu, He", 2017, "1611.05431"
)

for _name, _params, _top1 in (
    ("resnext50_32x4d", 25_028_904, 77.8),
    ("resnext101_32x8d", 88_791_336, None),
    ("resnext101_64x4d", 83_455_272, None),
):
    register(
        ModelEntry(
            name=_name,
            builder=_name,
            family="resnext",
            paper=PAPER,
            params=_params,
            recipe="resnext",
            top1=_top1,
            protocol="1-crop (Table 3)",
            notes="stride on the grouped 3x3 (as the paper's form (c))",
        )
    )
