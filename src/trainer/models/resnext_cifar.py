"""ResNeXt-29 for CIFAR, Xie, Girshick, Dollar, Tu & He, "Aggregated Residual Transformations for Deep Neural
Networks", CVPR 2017 (arXiv:1611.05431), Sec. 5.3.

timm's ResNeXts are the ImageNet ones; the CIFAR network, which timm lacks (Sec. 5.3):
- a 3x3 convolution to 64 channels with BN-ReLU, then three stages of three bottleneck blocks on maps of 32, 16 and
  8 px with outputs 256, 512, 1024; global average pooling and the classifier: 1 + 3 x 3 x 3 + 1 = 29 layers;
- a block is the grouped-convolution form (Fig. 3c): 1x1 to C x d channels, 3x3 in C groups, 1x1 to the output,
  each followed by BN (ReLU but after the last, which comes after the addition); d is 64 in the first stage and
  doubles with the output width ("8x64d": cardinality C = 8, bottleneck width d = 64);
- the downsampling stride sits on the 3x3 convolution; a shortcut that changes the shape is a 1x1 projection
  with BN (option B of He et al.), every other one the identity.
Parameter counts (Table 7, 10 classes): 8x64d 34.4 M, 16x64d 68.1 M.
Readings of our own: the stride on the 3x3 and the projection shortcuts are the authors' code
(github.com/facebookresearch/ResNeXt, fb.resnet.torch's), which the paper does not spell out for CIFAR; He
initialisation; the feature pyramid takes the three stage outputs (strides 1, 2, 4); CIFAR-10 input statistics.
"""

from typing import Any

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, register
from trainer.models.preact_resnet import cifar_cfg
from trainer.models.stages import PooledLinearHead, StagedModel


class GroupedBottleneck(nn.Module):
    """Fig. 3c: 1x1 (C x d) - grouped 3x3 (C groups) - 1x1, BN after each, ReLU between and after the sum."""

    def __init__(self, in_chs: int, out_chs: int, width: int, groups: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        reshapes = stride != 1 or in_chs != out_chs
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs))
            if reshapes
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        return self.act(self.bn3(self.conv3(x)) + shortcut)


class ResNeXtCifar(PooledLinearHead, StagedModel, nn.Module):
    """ResNeXt-29 (C x d) for CIFAR: 3 stages of 3 blocks, outputs 256, 512, 1024, bottleneck C x d, 2Cd, 4Cd."""

    def __init__(
        self,
        cardinality: int = 8,
        base_width: int = 64,
        blocks_per_stage: int = 3,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        for key, value in (("cardinality", cardinality), ("base_width", base_width), ("depth", blocks_per_stage)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"resnext_cifar: {key}={value} is not an integer >= 1")
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(True))
        in_chs, stages, self.feature_info = 64, [], []
        for stage_idx in range(3):
            out_chs, width = 256 * 2**stage_idx, cardinality * base_width * 2**stage_idx
            blocks = []
            for block_idx in range(blocks_per_stage):
                stride = 2 if stage_idx > 0 and block_idx == 0 else 1
                blocks.append(GroupedBottleneck(in_chs, out_chs, width, cardinality, stride))
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


def _create_resnext_cifar(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNeXtCifar:
    return build_model_with_cfg(
        ResNeXtCifar, variant, pretrained, feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2)), **kwargs
    )


PAPER = Paper(
    "Aggregated Residual Transformations for Deep Neural Networks", "Xie, Girshick, Dollar, Tu, He", 2017, "1611.05431"
)
default_cfgs = generate_default_cfgs(
    {
        name: {**cifar_cfg("arXiv:1611.05431", PAPER.title), "first_conv": "stem.0"}
        for name in ("resnext29_8x64d_cifar", "resnext29_16x64d_cifar")
    }
)


@register_model
def resnext29_8x64d_cifar(pretrained: bool = False, **kwargs: Any) -> ResNeXtCifar:
    """ResNeXt-29, 8x64d for CIFAR (Xie et al. 2017, Sec. 5.3): cardinality 8, bottleneck width 64."""
    return _create_resnext_cifar("resnext29_8x64d_cifar", pretrained, **{"cardinality": 8, "base_width": 64, **kwargs})


@register_model
def resnext29_16x64d_cifar(pretrained: bool = False, **kwargs: Any) -> ResNeXtCifar:
    """ResNeXt-29, 16x64d for CIFAR (Xie et al. 2017, Sec. 5.3): cardinality 16, bottleneck width 64."""
    return _create_resnext_cifar(
        "resnext29_16x64d_cifar", pretrained, **{"cardinality": 16, "base_width": 64, **kwargs}
    )


# Table 7: test error (%) with the standard augmentation (pad 4, crop, flip), median of 10 runs
CIFAR_ERROR = {
    "resnext29_8x64d_cifar": {"C10+": 3.65, "C100+": 17.77},
    "resnext29_16x64d_cifar": {"C10+": 3.58, "C100+": 17.31},
}
PARAMS = {"resnext29_8x64d_cifar": 35_441_448, "resnext29_16x64d_cifar": 69_169_960}  # at 1000 classes
CIFAR_PARAMS = {"resnext29_8x64d_cifar": 34_426_698, "resnext29_16x64d_cifar": 68_155_210}  # at 10 classes

for _name, _errors in CIFAR_ERROR.items():
    register(
        ModelEntry(
            name=_name,
            builder=_name,
            family="resnext_cifar",
            paper=PAPER,
            params=PARAMS[_name],
            recipe="resnext_cifar",
            resolution=32,
            crop_ratio=1.0,
            protocol="no ImageNet result: CIFAR test error in cifar_error",
            source="own",
            cifar_error=_errors,
            cifar_params=CIFAR_PARAMS[_name],
            notes="CIFAR ResNeXt-29 (params at 1000 classes); Table 7",
        )
    )
