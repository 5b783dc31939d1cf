"""Darknet-53, the YOLOv3 backbone: Redmon & Farhadi, "YOLOv3: An Incremental Improvement", 2018 (arXiv:1804.02767).

timm's `darknet53` is the paper's Table 1 network (52 convolutions in five residual stages, leaky ReLU, BN, no
pooling: strided 3x3 convolutions downsample). Input 256 px: the paper's Table 2 classifiers are "tested at
256x256, single crop"; eval crop 0.875 (timm's cfg says 0.887). The reference table lists no Darknet-53 accuracy, so
`top1`/`top5` are None (the paper's Table 2 reports 77.2 / 93.8).

Recipe: the paper gives none of its own ("each network is trained with identical settings", Table 2), and those
settings are Darknet's ImageNet classifier recipe published with Darknet-19 (Redmon & Farhadi 2017, YOLO9000 Sec. 3:
SGD, polynomial decay of power 4, weight decay 5e-4, momentum 0.9). So the entry names the `darknet19` recipe.
"""

from trainer.models.catalogue import ModelEntry, Paper, register

PAPER = Paper("YOLOv3: An Incremental Improvement", "Redmon, Farhadi", 2018, "1804.02767")

register(
    ModelEntry(
        name="darknet53",
        builder="darknet53",
        family="darknet",
        paper=PAPER,
        params=41_609_928,
        recipe="darknet19",
        resolution=256,
        notes="paper Table 2: 77.2 / 93.8 at 256 (not in the reference table); trained with Darknet-19's recipe",
    )
)
