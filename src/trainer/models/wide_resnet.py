"""Wide ResNet, Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (arXiv:1605.07146).

The ImageNet networks of Sec. 4 (Table 8): ResNet-50/101 bottlenecks with the inner 3x3 (and 1x1-in) width doubled
("WRN-50-2-bottleneck"). timm's `wide_resnet50_2` / `wide_resnet101_2` are those networks (as torchvision's), with the
stride on the 3x3. Accuracy: Table 8, single crop (21.9 / 6.03 % error for WRN-50-2); the paper reports no
WRN-101-2 ImageNet number.
"""

from trainer.models.catalogue import ModelEntry, Paper, register

PAPER = Paper("Wide Residual Networks", "Zagoruyko, Komodakis", 2016, "1605.07146")

for _name, _params, _top1, _top5 in (
    ("wide_resnet50_2", 68_883_240, 78.1, 93.97),
    ("wide_resnet101_2", 126_886_696, None, None),
):
    register(
        ModelEntry(
            name=_name,
            builder=_name,
            family="wide_resnet",
            paper=PAPER,
            params=_params,
            recipe="wide_resnet",
            top1=_top1,
            top5=_top5,
            protocol="1-crop (Table 8)",
        )
    )
