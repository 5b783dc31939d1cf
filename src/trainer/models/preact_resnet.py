"""Pre-activation ResNet, He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016
(arXiv:1603.05027).

timm's `resnetv2_50` / `resnetv2_101` are the paper's full pre-activation bottleneck units (Fig. 4e: BN-ReLU before
each convolution, a clean identity path, a final BN-ReLU after the last unit), with the plain 7x7 stem; the
`resnetv2_*x*` models are BiT's (GroupNorm + weight standardisation) and the `d`/`t` ones change the stem, so neither
is used. As in timm's ResNet, the downsampling stride sits on the 3x3 convolution. The paper reports ImageNet only
for ResNet-152/200 (Table 5), so these entries carry no paper accuracy.
"""

from trainer.models.catalogue import ModelEntry, Paper, register

PAPER = Paper("Identity Mappings in Deep Residual Networks", "He, Zhang, Ren, Sun", 2016, "1603.05027")

for _name, _builder, _params in (
    ("preact_resnet50", "resnetv2_50", 25_549_352),
    ("preact_resnet101", "resnetv2_101", 44_541_480),
):
    register(
        ModelEntry(
            name=_name,
            builder=_builder,
            family="preact_resnet",
            paper=PAPER,
            params=_params,
            recipe="preact_resnet",
            notes=f"timm's {_builder}: full pre-activation bottlenecks, stride on the 3x3",
        )
    )
