"""VGG, Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015
(arXiv:1409.1556).

timm implements the paper's configurations A, B, D and E (VGG-11/13/16/19, Table 1), so the catalogue uses timm's
`vgg*` models. timm writes FC6 as a 7x7 convolution over the 7x7x512 pool5 maps (its `ConvMlp` pre-logits head) and
FC7 as a 1x1 convolution: the paper's own "fully-convolutional" test-time form (Sec. 3.2). The weights are the same
shape as the linear layers (512 * 7 * 7 * 4096 + 4096), so VGG-16 has torchvision's 138,357,544 parameters exactly;
at inputs other than 224 the head is applied densely and the class scores average-pooled, as the paper does.

The `_bn` variants add BatchNorm after every convolution: not in the paper (torchvision's addition, which the paper
predates), so they carry no paper accuracy. The paper's accuracies are multi-scale dense evaluation (Table 4 for
VGG-16: 24.8 / 7.5 % error; VGG-19 from the multi-crop + dense row of Table 5); Table 4 gives no single-model number
for VGG-11/13 at the same protocol, so those are left out.
"""

from trainer.models.catalogue import ModelEntry, Paper, register

PAPER = Paper(
    "Very Deep Convolutional Networks for Large-Scale Image Recognition", "Simonyan, Zisserman", 2015, "1409.1556"
)
_NOTE = "FC6/FC7 as 7x7/1x1 convolutions (timm ConvMlp): same weights as the linear layers, applied densely"
_BN_NOTE = "BatchNorm after every convolution: torchvision's variant, not in the paper; no paper accuracy"

# name, params at 1000 classes, paper top-1 / top-5, protocol
for _name, _params, _top1, _top5, _protocol in (
    ("vgg11", 132_863_336, None, None, "1-crop"),
    ("vgg13", 133_047_848, None, None, "1-crop"),
    ("vgg16", 138_357_544, 75.2, 92.5, "multi-scale dense eval (Table 4)"),
    ("vgg19", 143_667_240, 75.6, 92.9, "multi-crop + dense eval (Table 5)"),
    ("vgg11_bn", 132_868_840, None, None, "1-crop"),
    ("vgg13_bn", 133_053_736, None, None, "1-crop"),
    ("vgg16_bn", 138_365_992, None, None, "1-crop"),
    ("vgg19_bn", 143_678_248, None, None, "1-crop"),
):
    register(
        ModelEntry(
            name=_name,
            builder=_name,
            family="vgg",
            paper=PAPER,
            params=_params,
            recipe="vgg",
            top1=_top1,
            top5=_top5,
            protocol=_protocol,
            notes=_BN_NOTE if _name.endswith("_bn") else _NOTE,
        )
    )
