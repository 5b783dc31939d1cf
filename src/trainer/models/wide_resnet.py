"""Wide ResNet, Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (arXiv:1605.07146).

ImageNet: the networks of Sec. 4 (Table 8): ResNet-50/101 bottlenecks with the inner 3x3 (and 1x1-in) width doubled
("WRN-50-2-bottleneck"). timm's `wide_resnet50_2` / `wide_resnet101_2` are those networks (as torchvision's), with the
stride on the 3x3. Accuracy: Table 8, single crop (21.9 / 6.03 % error for WRN-50-2); the paper reports no
WRN-101-2 ImageNet number.

CIFAR: WRN-d-k (Table 1), which timm lacks, written here after the authors' code
(github.com/szagoruyko/wide-residual-networks, `models/wide-resnet.lua`) on the CIFAR network shared with the
pre-activation ResNets (`preact_resnet.CifarResNet`: 3x3 stem of 16 channels, three stages at 32, 16 and 8 px, final
BN-ReLU, global average pool, classifier):
- stage widths 16k, 32k, 64k; n = (d - 4) / 6 wide-basic units B(3,3) per stage, each BN-ReLU-conv3x3 ->
  BN-ReLU-dropout-conv3x3 (Sec. 2.4: dropout between the convolutions; the code puts it after the second ReLU);
- depth d counts every convolution: the stem, the 6n in the units and the three 1x1 projection shortcuts (the
  first unit of each stage changes the width; its BN-ReLU feeds both the branch and the projection, as in the code);
- the stride sits on the first 3x3 of a stage's first unit; convolutions without bias, initialised
  N(0, 2 / (k^2 * out_channels)); BN weight 1, bias 0; classifier bias 0 (the code's MSRinit / FCinit).
`drop_rate` is that dropout and defaults to the paper's CIFAR setting 0.3 (Sec. 3: the rate was cross-validated,
0.3 on CIFAR; the best WRN-28-10 CIFAR results, Table 6, use it); `drop_rate=0` gives the plain B(3,3) networks of
Tables 4-5. `drop_path_rate` adds timm's `DropPath` on the residual branches (not in the paper). Input statistics are
CIFAR-10's (the code's mean/std normalisation). The paper reports CIFAR errors, not ImageNet accuracy, for these:
`top1` is None and the notes give the CIFAR-10 / CIFAR-100 test errors.
"""

from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import DropPath
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, register
from trainer.models.preact_resnet import CifarResNet, check_rate, cifar_cfg


class WideBasicBlock(nn.Module):
    """B(3,3) in pre-activation order: BN-ReLU-conv3x3 -> BN-ReLU-dropout-conv3x3, added to the shortcut."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(in_chs)
        self.act1 = act_layer(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.norm2 = norm_layer(out_chs)
        self.act2 = act_layer(inplace=True)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        reshapes = stride != 1 or in_chs != out_chs
        self.downsample = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False) if reshapes else None
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_preact = self.act1(self.norm1(x))
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        x = self.conv1(x_preact)
        x = self.conv2(self.drop(self.act2(self.norm2(x))))
        return self.drop_path(x) + shortcut


class WideResNetCifar(CifarResNet):
    """WRN-`depth`-`widen_factor` for CIFAR: depth = 6n + 4, n wide-basic units per stage, widths 16k, 32k, 64k."""

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.3,
        drop_path_rate: float = 0.0,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        global_pool: str = "avg",
    ) -> None:
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"wide_resnet_cifar: depth={depth} is not 6n+4 with n >= 1 (the paper: 16, 22, 28, 40)")
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
            raise ConfigError(f"wide_resnet_cifar: widen_factor={widen_factor} is not an integer >= 1")
        check_rate("wide_resnet_cifar", "drop_rate", drop_rate)
        check_rate("wide_resnet_cifar", "drop_path_rate", drop_path_rate)
        super().__init__(
            partial(WideBasicBlock, drop_rate=drop_rate),
            blocks_per_stage=(depth - 4) // 6,
            widths=(16 * widen_factor, 32 * widen_factor, 64 * widen_factor),
            num_classes=num_classes,
            in_chans=in_chans,
            drop_path_rate=drop_path_rate,
            act_layer=act_layer,
            norm_layer=norm_layer,
            global_pool=global_pool,
        )
        self.depth, self.widen_factor, self.drop_rate = depth, widen_factor, drop_rate


def _create_wide_resnet_cifar(variant: str, pretrained: bool = False, **kwargs: Any) -> WideResNetCifar:
    return build_model_with_cfg(
        WideResNetCifar,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2)),
        **kwargs,
    )


PAPER = Paper("Wide Residual Networks", "Zagoruyko, Komodakis", 2016, "1605.07146")


default_cfgs = generate_default_cfgs(
    {name: cifar_cfg("arXiv:1605.07146", PAPER.title) for name in ("wide_resnet28_10_cifar", "wide_resnet40_4_cifar")}
)


@register_model
def wide_resnet28_10_cifar(pretrained: bool = False, **kwargs: Any) -> WideResNetCifar:
    """WRN-28-10 for CIFAR (Zagoruyko & Komodakis 2016): 4 units per stage, widths 160, 320, 640."""
    return _create_wide_resnet_cifar(
        "wide_resnet28_10_cifar", pretrained, **{"depth": 28, "widen_factor": 10, **kwargs}
    )


@register_model
def wide_resnet40_4_cifar(pretrained: bool = False, **kwargs: Any) -> WideResNetCifar:
    """WRN-40-4 for CIFAR (Zagoruyko & Komodakis 2016): 6 units per stage, widths 64, 128, 256."""
    return _create_wide_resnet_cifar("wide_resnet40_4_cifar", pretrained, **{"depth": 40, "widen_factor": 4, **kwargs})


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

# CIFAR-10 / CIFAR-100 test error (%), mean/std preprocessing, median of 5 runs
CIFAR_ERROR = {
    "wide_resnet28_10_cifar": (3.89, 18.85),  # Table 6, dropout 0.3 (4.00 / 19.25 without: Table 5)
    "wide_resnet40_4_cifar": (4.53, 21.18),  # Table 5, without dropout (the paper gives none with it)
}
_ERROR_NOTES = {
    "wide_resnet28_10_cifar": "with dropout 0.3 (Table 6; 4.00 / 19.25 without, Table 5)",
    "wide_resnet40_4_cifar": "without dropout (Table 5: build with drop_rate=0 for that network)",
}

CIFAR_PARAMS = {"wide_resnet28_10_cifar": 36_479_194, "wide_resnet40_4_cifar": 8_949_210}  # at 10 classes

for _name, _params in (("wide_resnet28_10_cifar", 37_113_784), ("wide_resnet40_4_cifar", 9_203_640)):
    _c10, _c100 = CIFAR_ERROR[_name]
    register(
        ModelEntry(
            name=_name,
            builder=_name,
            family="wide_resnet",
            paper=PAPER,
            params=_params,
            recipe="wide_resnet_cifar",
            resolution=32,
            crop_ratio=1.0,  # CIFAR images are used whole (4-px pad + random 32-px crop in training only)
            protocol="no ImageNet result: CIFAR test error in notes",
            source="own",
            cifar_error={"C10+": _c10, "C100+": _c100},
            cifar_params=CIFAR_PARAMS[_name],
            notes=(
                f"CIFAR network (params at 1000 classes, dropout 0.3 by default); CIFAR-10 / CIFAR-100 test error "
                f"{_c10} / {_c100} % {_ERROR_NOTES[_name]}; runs at any input size, catalogue floor 32"
            ),
        )
    )
