"""ResNet, He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv:1512.03385).

timm implements the paper's network, so the catalogue uses timm's `resnet*` models. timm (like torchvision)
puts the downsampling stride of a bottleneck block on its 3x3 convolution rather than the first 1x1: the "v1.5"
form most recipes train. ResNet-18/34 (basic blocks) are the paper's as published. Reported accuracies are the
paper's 10-crop validation errors (Tables 2 and 3), given here as accuracies.
"""

from trainer.models.catalogue import ModelEntry, Paper, register

PAPER = Paper("Deep Residual Learning for Image Recognition", "He, Zhang, Ren, Sun", 2016, "1512.03385")
_NOTE = "timm's ResNet: stride on the bottleneck 3x3 (v1.5)"

# name, params at 1000 classes, paper top-1 / top-5 (10-crop; Table 2 gives ResNet-18's top-1 only)
for _name, _params, _top1, _top5 in (
    ("resnet18", 11_689_512, 72.12, None),
    ("resnet34", 21_797_672, 75.48, 92.54),
    ("resnet50", 25_557_032, 77.15, 93.29),
    ("resnet101", 44_549_160, 78.25, 93.95),
    ("resnet152", 60_192_808, 78.57, 94.29),
):
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
            notes=_NOTE,
        )
    )
