"""ResNeXt, Xie, Girshick, Dollar, Tu & He, "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017
(arXiv:1611.05431).

timm's `resnext*` models are the paper's form (c) blocks (grouped 3x3 convolution, cardinality x bottleneck width) on
the ResNet-50/101 layouts. Accuracy, single 224-px crop: ResNeXt-50 (32x4d) and ResNeXt-101 (32x4d) from Table 3
(22.2 and 21.2% top-1 error; Table 3 gives no top-5), ResNeXt-101 (64x4d) from Table 4 (20.4 / 5.3%). (Table 5's
19.1 / 4.4% for 64x4d are 320/299-px crops.) ResNeXt-101 (32x8d) is not a network of the paper: it came later with
the WSL/torchvision models, so it has no paper accuracy.
"""

from trainer.models.catalogue import ModelEntry, Paper, register

PAPER = Paper(
    "Aggregated Residual Transformations for Deep Neural Networks", "Xie, Girshick, Dollar, Tu, He", 2017, "1611.05431"
)

# name, params at 1000 classes, paper top-1 / top-5 (1 crop at 224), where from, notes
_FORM_C = "stride on the grouped 3x3 (as the paper's form (c))"
for _name, _params, _top1, _top5, _protocol, _notes in (
    ("resnext50_32x4d", 25_028_904, 77.8, None, "1-crop (Table 3)", _FORM_C),
    ("resnext101_32x4d", 44_177_704, 78.8, None, "1-crop (Table 3)", _FORM_C),
    ("resnext101_64x4d", 83_455_272, 79.6, 94.7, "1-crop (Table 4)", _FORM_C),
    (
        "resnext101_32x8d",
        88_791_336,
        None,
        None,
        "not in the paper",
        "not a network of the paper (later WSL / torchvision models); " + _FORM_C,
    ),
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
            top5=_top5,
            protocol=_protocol,
            notes=_notes,
        )
    )
