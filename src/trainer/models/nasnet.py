"""NASNet-A, Zoph, Vasudevan, Shlens & Le, "Learning Transferable Architectures for Scalable Image Recognition",
CVPR 2018 (arXiv:1707.07012).

timm's `nasnetalarge` is NASNet-A (6 @ 4032) of Table 2, ported from the authors' TF-slim release (88.75 M
parameters against the paper's 88.9 M). Input 331 px. The eval crop: the paper does not give one; the TF-slim release
evaluates with its inception preprocessing, a 0.875 centre crop, which is used here (timm's cfg says 0.911, from the
Cadene port). Accuracy: Table 2, single crop (82.7 / 96.2 %). The auxiliary head of the paper's training is not in
timm's model. NASNet-A Mobile has no timm implementation and is out of this file's scope.
"""

from trainer.models.catalogue import ModelEntry, Paper, register

PAPER = Paper(
    "Learning Transferable Architectures for Scalable Image Recognition",
    "Zoph, Vasudevan, Shlens, Le",
    2018,
    "1707.07012",
)

register(
    ModelEntry(
        name="nasnet_a_large",
        builder="nasnetalarge",
        family="nasnet",
        paper=PAPER,
        params=88_753_150,
        recipe="nasnet",
        resolution=331,
        top1=82.7,
        top5=96.2,
        protocol="1-crop (Table 2)",
        notes="no auxiliary head (the paper trains with one)",
    )
)
