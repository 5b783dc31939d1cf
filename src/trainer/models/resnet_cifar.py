"""ResNet for CIFAR, He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(arXiv:1512.03385), Sec. 4.2.

The network of Sec. 4.2, which timm lacks (its ResNets are the ImageNet ones, with a 7x7/2 stem and a max-pool):
- a 3x3 convolution to 16 channels with BN-ReLU, then 6n 3x3 convolutions in three stages of n basic blocks on maps
  of 32, 16 and 8 px with 16, 32 and 64 filters; global average pooling and the classifier: 6n + 2 weighted layers
  (n = 3, 5, 7, 9, 18, 200 give ResNet-20, 32, 44, 56, 110, 1202);
- the basic block of Sec. 3 (conv-BN-ReLU-conv-BN, added to the shortcut, then ReLU), the stride 2 on the first
  convolution of the first block of stages 2 and 3;
- identity shortcuts everywhere, option A where the shape changes ("all shortcuts are identity", Sec. 4.2): the
  input subsampled by 2 and padded with zero channels, so the shortcuts add no parameter (0.27 M ... 19.4 M,
  Table 6, at 10 classes).
Readings of our own: the subsampling of option A takes every second pixel (x[..., ::2, ::2]), as the widely used
reimplementations do (the paper does not say which pixels); convolutions have no bias (BN follows) and start from
He et al. 2015's N(0, 2 / fan_out) ("we use the weight initialization in [13]"); BN weight 1, bias 0.
`drop_path_rate` adds timm's `DropPath` on the residual branches, rising linearly over the blocks as in timm's
ResNet (the stochastic-depth recipe swaps them for the paper's batch-wise form); the feature pyramid takes the three
stage outputs (strides 1, 2, 4). Input statistics are CIFAR-10's.
Errors (Table 6, CIFAR-10 test, with the 4-px pad / crop / flip augmentation "C10+"): 8.75, 7.51, 7.17, 6.97, 6.43,
7.93 % for ResNet-20, 32, 44, 56, 110 (best of 5 runs; mean 6.61 +- 0.16), 1202. The paper gives no CIFAR-100 figure.
"""

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, SelectAdaptivePool2d, calculate_drop_path_rates
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, register
from trainer.models.preact_resnet import check_rate, cifar_cfg
from trainer.models.stages import PooledLinearHead, StagedModel


class ZeroPadShortcut(nn.Module):
    """Option A (Sec. 3.3): the identity, subsampled by `stride` and padded with zero channels up to `out_chs`."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = out_chs - in_chs, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[..., :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class BasicBlock(nn.Module):
    """Sec. 3 / Fig. 2: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        drop_path_rate: float = 0.0,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(out_chs)
        self.act1 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = norm_layer(out_chs)
        reshapes = stride != 1 or in_chs != out_chs
        self.shortcut = ZeroPadShortcut(in_chs, out_chs, stride) if reshapes else nn.Identity()
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.act2 = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(self.drop_path(x) + shortcut)


class ResNetCifar(PooledLinearHead, StagedModel, nn.Module):
    """ResNet-`depth` for CIFAR: depth = 6n + 2, n basic blocks per stage, 16, 32, 64 filters."""

    def __init__(
        self,
        depth: int = 110,
        num_classes: int = 1000,
        in_chans: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        drop_path_rate: float = 0.0,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"resnet_cifar: depth={depth} is not 6n+2 with n >= 1 (the paper: 20 ... 110, 1202)")
        check_rate("resnet_cifar", "drop_path_rate", drop_path_rate)
        self.depth, self.num_classes = depth, num_classes
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False), norm_layer(widths[0]), act_layer(inplace=True)
        )
        rates = calculate_drop_path_rates(drop_path_rate, 3 * n)
        in_chs, stages, self.feature_info = widths[0], [], []
        for stage_idx, out_chs in enumerate(widths):
            blocks = []
            for block_idx in range(n):
                stride = 2 if stage_idx > 0 and block_idx == 0 else 1
                rate = rates[stage_idx * n + block_idx]
                blocks.append(BasicBlock(in_chs, out_chs, stride, rate, act_layer=act_layer, norm_layer=norm_layer))
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=2**stage_idx, module=f"stages.{stage_idx}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = in_chs
        self.grad_checkpointing = False
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def trunk(self) -> list[nn.Module]:
        return [self.stem, *self.stages]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self.run_stages(x)
        return self.stages(self.stem(x))


def _create_resnet_cifar(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    return build_model_with_cfg(
        ResNetCifar, variant, pretrained, feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2)), **kwargs
    )


DEPTHS = (20, 32, 44, 56, 110, 1202)
PAPER = Paper("Deep Residual Learning for Image Recognition", "He, Zhang, Ren, Sun", 2016, "1512.03385")
default_cfgs = generate_default_cfgs(
    {f"resnet{d}_cifar": {**cifar_cfg("arXiv:1512.03385", PAPER.title), "first_conv": "stem.0"} for d in DEPTHS}
)


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-20 for CIFAR (He et al. 2016, Sec. 4.2): n = 3."""
    return _create_resnet_cifar("resnet20_cifar", pretrained, **{"depth": 20, **kwargs})


@register_model
def resnet32_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-32 for CIFAR (He et al. 2016, Sec. 4.2): n = 5."""
    return _create_resnet_cifar("resnet32_cifar", pretrained, **{"depth": 32, **kwargs})


@register_model
def resnet44_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-44 for CIFAR (He et al. 2016, Sec. 4.2): n = 7."""
    return _create_resnet_cifar("resnet44_cifar", pretrained, **{"depth": 44, **kwargs})


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-56 for CIFAR (He et al. 2016, Sec. 4.2): n = 9."""
    return _create_resnet_cifar("resnet56_cifar", pretrained, **{"depth": 56, **kwargs})


@register_model
def resnet110_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-110 for CIFAR (He et al. 2016, Sec. 4.2): n = 18."""
    return _create_resnet_cifar("resnet110_cifar", pretrained, **{"depth": 110, **kwargs})


@register_model
def resnet1202_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-1202 for CIFAR (He et al. 2016, Sec. 4.2): n = 200."""
    return _create_resnet_cifar("resnet1202_cifar", pretrained, **{"depth": 1202, **kwargs})


# Table 6: CIFAR-10 test error (%) with augmentation (C10+); the paper reports no CIFAR-100 result
CIFAR_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PARAMS = {20: 334_072, 32: 528_504, 44: 722_936, 56: 917_368, 110: 1_792_312, 1202: 19_485_624}  # 1000 classes
CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}  # 10 classes

for _depth in DEPTHS:
    register(
        ModelEntry(
            name=f"resnet{_depth}_cifar",
            builder=f"resnet{_depth}_cifar",
            family="resnet_cifar",
            paper=PAPER,
            params=PARAMS[_depth],
            recipe="resnet_cifar",
            resolution=32,
            crop_ratio=1.0,  # CIFAR images are used whole (4-px pad + random 32-px crop in training only)
            protocol="no ImageNet result: CIFAR test error in cifar_error",
            source="own",
            cifar_error={"C10+": CIFAR_ERROR[_depth]},
            cifar_params=CIFAR_PARAMS[_depth],
            notes=f"CIFAR network, 6n+2 = {_depth} layers, option-A shortcuts (params at 1000 classes); Table 6",
        )
    )
