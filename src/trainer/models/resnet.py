"""ResNet, He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv:1512.03385).

timm implements the paper's network, so the catalogue uses timm's `resnet*` models. timm (like torchvision)
puts the downsampling stride of a bottleneck block on its 3x3 convolution rather than the first 1x1: the "v1.5"
form most recipes train. Reported accuracies are the paper's 10-crop validation errors (Tables 2 and 3), given here
as accuracies. The paper's Table 2 trains ResNet-18/34 with option-A shortcuts (identity, zero-padding where the width
grows); timm's ResNet-18/34 (like torchvision's) use projection shortcuts there (option B: 1x1 convolution + BN), a
few more parameters. ResNet-34's figures here are Table 3's option-B row (24.52 / 7.46% error: the network built
here; option A is 25.03 / 7.76); ResNet-18 has only Table 2's option-A figure (27.88% top-1 error), kept as the
nearest the paper gives.
"""

from trainer.models.catalogue import ModelEntry, Paper, register

PAPER = Paper("Deep Residual Learning for Image Recognition", "He, Zhang, Ren, Sun", 2016, "1512.03385")
_NOTE = "timm's ResNet: stride on the bottleneck 3x3 (v1.5)"

# name, params at 1000 classes, paper top-1 / top-5 (10-crop; Table 2 gives ResNet-18's top-1 only)
for _name, _params, _top1, _top5 in (
    ("resnet18", 11_689_512, 72.12, None),
    ("resnet34", 21_797_672, 75.48, 92.54),  # Table 3, option B
    ("resnet50", 25_557_032, 77.15, 93.29),
    ("resnet101", 44_549_160, 78.25, 93.95),
    ("resnet152", 60_192_808, 78.57, 94.29),
):
    notes = {
        "resnet18": "projection shortcuts (option B); the paper's figure is Table 2's, for option A (zero-padding)",
        "resnet34": "projection shortcuts (option B): Table 3's option-B figures (Table 2's: option A, zero-padding)",
    }.get(_name, _NOTE)
    register(
        ModelEntry(
            name=_name,
            builder=_name,
            family="resnet",
            paper=PAPER,
            params=_params,
            recipe="resnet",
            top1=_top1,
            top5=_top5,
            protocol="10-crop",
            notes=notes,
        )
    )
