"""Xception, Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions", CVPR 2017 (arXiv:1610.02357).

timm's `legacy_xception` is the paper's network (Fig. 5: entry flow, 8 middle-flow blocks, exit flow; 22.86 M
parameters); timm's newer `xception41/65/71` are the DeepLab-v3+ modifications (aligned Xception), not the paper's.
Input 299 px, eval centre crop 0.875 (the paper evaluates single crops at 299 like Inception v3; timm's cfg says
0.8975), bilinear resize. Accuracy: Table 1, single crop (79.0 / 94.5 %).
"""

from trainer.models.catalogue import ModelEntry, Paper, register

PAPER = Paper("Xception: Deep Learning with Depthwise Separable Convolutions", "Chollet", 2017, "1610.02357")

register(
    ModelEntry(
        name="xception",
        builder="legacy_xception",
        family="xception",
        paper=PAPER,
        params=22_855_952,
        recipe="xception",
        resolution=299,
        top1=79.0,
        top5=94.5,
        protocol="1-crop (Table 1)",
        notes="timm's legacy_xception (the paper's network; timm's xception41/65/71 are DeepLab's aligned variants)",
    )
)
