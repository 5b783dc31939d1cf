"""Inception-v4 and Inception-ResNet-v2, Szegedy, Ioffe, Vanhoucke & Alemi, "Inception-v4, Inception-ResNet and the
Impact of Residual Connections on Learning", AAAI 2017 (arXiv:1602.07261).

timm implements both networks (ported from TF-slim), so the catalogue uses timm's `inception_v4` and
`inception_resnet_v2`. Input 299 px, eval centre crop 0.875 (TF-slim's inception preprocessing; timm's cfg for
Inception-ResNet-v2 says 0.8975), bilinear resize as TF-slim. Accuracies: the single-crop single-model rows of
Table 2 (20.0 / 5.0 and 19.9 / 4.9 % error). Inception-ResNet-v2 is TF-slim's release, whose residual scaling
(0.17 / 0.1 / 0.2 per block type) is the paper's Sec. 3.3 "scaling of the residuals" with values the paper leaves open.
"""

from trainer.models.catalogue import ModelEntry, Paper, register

PAPER = Paper(
    "Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning",
    "Szegedy, Ioffe, Vanhoucke, Alemi",
    2017,
    "1602.07261",
)

# name, params at 1000 classes, min resolution, paper top-1 / top-5
for _name, _params, _min_resolution, _top1, _top5 in (
    ("inception_v4", 42_679_816, 75, 80.0, 95.0),
    ("inception_resnet_v2", 55_843_464, 75, 80.1, 95.1),
):
    register(
        ModelEntry(
            name=_name,
            builder=_name,
            family="inception_v4",
            paper=PAPER,
            params=_params,
            recipe="inception_v4",
            resolution=299,
            min_resolution=_min_resolution,
            top1=_top1,
            top5=_top5,
            protocol="1-crop (Table 2)",
        )
    )
