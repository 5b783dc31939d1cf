"""MobileNet v2, Sandler, Howard, Zhu, Zhmoginov & Chen, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018 (arXiv:1801.04381).

timm's `mobilenetv2_100` is the paper's network (Table 2: inverted residuals with linear bottlenecks, expansion 6,
ReLU6, a 1280-channel 1x1 head). Accuracy: Table 4, width 1.0 at 224 (72.0 % top-1; the paper gives no top-5).
"""

from trainer.models.catalogue import ModelEntry, Paper, register

PAPER = Paper(
    "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
    "Sandler, Howard, Zhu, Zhmoginov, Chen",
    2018,
    "1801.04381",
)

register(
    ModelEntry(
        name="mobilenet_v2_100",
        builder="mobilenetv2_100",
        family="mobilenet_v2",
        paper=PAPER,
        params=3_504_872,
        recipe="mobilenet_v2",
        top1=72.0,
        protocol="1-crop (Table 4)",
    )
)
