"""Inception-ResNet-v1, Szegedy, Ioffe, Vanhoucke & Alemi, "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning", AAAI 2017 (arXiv:1602.07261).

The paper's Fig. 15 schema with the Inception-ResNet-v1 blocks, which timm lacks (its `inception_resnet_v2` has the
Inception-v4 stem and wider blocks); the layer names follow timm's Inception-ResNet-v2:
- stem of Fig. 14: 3x3/2 V 32, 3x3 V 32, 3x3 64, 3x3/2 V max-pool, 1x1 80, 3x3 V 192, 3x3/2 V 256 (35x35x256 at 299);
- 5 x Inception-ResNet-A (Fig. 10), Reduction-A (Fig. 7 with k, l, m, n = 192, 192, 256, 384, Table 1: 17x17x896),
  10 x Inception-ResNet-B (Fig. 11), Reduction-B (Fig. 12: 8x8x1792), 5 x Inception-ResNet-C (Fig. 13);
- average pooling, dropout 0.2 (keep 0.8), the classifier on 1792 features.
"V" convolutions and pools of the figures are unpadded; all others keep the size.

Readings where the paper is ambiguous:
- BN after every convolution of the branches and the stem, with ReLU (Sec. 3.2: BN "on top of the traditional
  layers, but not on top of the summations"). The 1x1 "Linear" convolution that restores the width before the
  addition has a bias and no BN or activation, as in TF-slim's Inception-ResNet-v2 released with the paper (and in
  timm's port of it); the sum is followed by a ReLU (Figs. 10, 11, 13), also in the last C block.
- Residual scaling (Sec. 3.3: "scaling factors between 0.1 and 0.3"): `residual_scales` (A, B, C) defaults to
  TF-slim's (0.17, 0.10, 0.20), the values of its Inception-ResNet-v2 and of its v1 port in FaceNet.
- `drop_path_rate` adds timm's `DropPath` on the scaled residual branches (not in the paper), rising linearly from 0 at
  the first block to `drop_path_rate` at the last as in timm's ResNet, so the project's drop-path tools apply.
- BN epsilon 1e-3 as TF-slim; input statistics are the Inception ones (scaled to [-1, 1]), as for v2.
Accuracy: Table 2, single crop, single model: 21.3 / 5.5 % top-1 / top-5 error.
"""

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import ConvNormAct, DropPath, calculate_drop_path_rates, create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, pretrained_cfg, register
from trainer.models.preact_resnet import check_rate
from trainer.models.stages import StagedModel

NUM_BLOCKS = (5, 10, 5)  # Inception-ResNet-A, -B, -C (Fig. 15)
ConvFactory = Callable[..., nn.Module]  # (in_chs, out_chs, kernel_size, stride=, padding=) -> conv, BN, ReLU


class InceptionResNetBlock(nn.Module):
    """Inception branches, concatenated, a linear 1x1 back to the input width, scaled, added to the input, ReLU."""

    def __init__(
        self,
        branches: Sequence[nn.Module],
        branch_chs: int,
        chs: int,
        scale: float,
        drop_path_rate: float,
        act_layer: type[nn.Module],
    ) -> None:
        super().__init__()
        if len(branches) not in (2, 3):
            raise ValueError(f"an Inception-ResNet block has 2 or 3 branches, not {len(branches)}")
        self.branch0, self.branch1 = branches[:2]
        self.branch2 = branches[2] if len(branches) == 3 else None
        self.scale = scale
        self.conv2d = nn.Conv2d(branch_chs, chs, 1)  # "1x1 Conv (Linear)": bias, no BN (Sec. 3.2)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.act = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch2 is None:  # written out, so TorchScript compiles it
            out = torch.cat([self.branch0(x), self.branch1(x)], 1)
        else:
            out = torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)
        return self.act(x + self.drop_path(self.conv2d(out) * self.scale))


def inception_resnet_a(conv: ConvFactory, scale: float, drop_path_rate: float, act_layer: type[nn.Module]) -> nn.Module:
    """Fig. 10, the 35x35 grid: 1x1 32 | 1x1 32, 3x3 32 | 1x1 32, 3x3 32, 3x3 32 -> 1x1 256."""
    branches = (
        conv(256, 32, 1),
        nn.Sequential(conv(256, 32, 1), conv(32, 32, 3, padding=1)),
        nn.Sequential(conv(256, 32, 1), conv(32, 32, 3, padding=1), conv(32, 32, 3, padding=1)),
    )
    return InceptionResNetBlock(branches, 96, 256, scale, drop_path_rate, act_layer)


def inception_resnet_b(conv: ConvFactory, scale: float, drop_path_rate: float, act_layer: type[nn.Module]) -> nn.Module:
    """Fig. 11, the 17x17 grid: 1x1 128 | 1x1 128, 1x7 128, 7x1 128 -> 1x1 896."""
    branches = (
        conv(896, 128, 1),
        nn.Sequential(
            conv(896, 128, 1), conv(128, 128, (1, 7), padding=(0, 3)), conv(128, 128, (7, 1), padding=(3, 0))
        ),
    )
    return InceptionResNetBlock(branches, 256, 896, scale, drop_path_rate, act_layer)


def inception_resnet_c(conv: ConvFactory, scale: float, drop_path_rate: float, act_layer: type[nn.Module]) -> nn.Module:
    """Fig. 13, the 8x8 grid: 1x1 192 | 1x1 192, 1x3 192, 3x1 192 -> 1x1 1792."""
    branches = (
        conv(1792, 192, 1),
        nn.Sequential(
            conv(1792, 192, 1), conv(192, 192, (1, 3), padding=(0, 1)), conv(192, 192, (3, 1), padding=(1, 0))
        ),
    )
    return InceptionResNetBlock(branches, 384, 1792, scale, drop_path_rate, act_layer)


class ReductionA(nn.Module):
    """Fig. 7, 35x35 -> 17x17: 3x3/2 V n | 1x1 k, 3x3 l, 3x3/2 V m | 3x3/2 V max-pool (Table 1, v1: 192/192/256/384)."""

    def __init__(self, conv: ConvFactory, in_chs: int = 256, klmn: Sequence[int] = (192, 192, 256, 384)) -> None:
        super().__init__()
        k, l, m, n = klmn  # noqa: E741  (the paper's names)
        self.branch0 = conv(in_chs, n, 3, stride=2)
        self.branch1 = nn.Sequential(conv(in_chs, k, 1), conv(k, l, 3, padding=1), conv(l, m, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class ReductionB(nn.Module):
    """Fig. 12, 17x17 -> 8x8: 1x1 256, 3x3/2 V 384 | 1x1 256, 3x3/2 V 256 | 1x1 256, 3x3 256, 3x3/2 V 256 | max-pool."""

    def __init__(self, conv: ConvFactory, in_chs: int = 896) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(conv(in_chs, 256, 1), conv(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(conv(in_chs, 256, 1), conv(256, 256, 3, stride=2))
        self.branch2 = nn.Sequential(conv(in_chs, 256, 1), conv(256, 256, 3, padding=1), conv(256, 256, 3, stride=2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class InceptionResNetV1(StagedModel, nn.Module):
    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        residual_scales: Sequence[float] = (0.17, 0.10, 0.20),
        global_pool: str = "avg",
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        check_rate("inception_resnet_v1", "drop_rate", drop_rate)
        check_rate("inception_resnet_v1", "drop_path_rate", drop_path_rate)
        if len(residual_scales) != 3:
            raise ConfigError(
                f"inception_resnet_v1: residual_scales={tuple(residual_scales)} needs 3 values (blocks A, B, C)"
            )
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        # BN and ReLU after every convolution; padding 0 ("V") unless given
        conv = partial(
            ConvNormAct,
            padding=0,
            norm_layer=norm_layer,
            act_layer=act_layer,
            norm_kwargs=dict(eps=1e-3),
            act_kwargs=dict(inplace=True),
        )

        # Fig. 14 (sizes at 299 px)
        self.conv2d_1a = conv(in_chans, 32, 3, stride=2)  # 149x149x32
        self.conv2d_2a = conv(32, 32, 3)  # 147x147x32
        self.conv2d_2b = conv(32, 64, 3, padding=1)  # 147x147x64
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)  # 73x73x64
        self.conv2d_3b = conv(64, 80, 1)  # 73x73x80
        self.conv2d_4a = conv(80, 192, 3)  # 71x71x192
        self.conv2d_4b = conv(192, 256, 3, stride=2)  # 35x35x256

        rates = iter(calculate_drop_path_rates(drop_path_rate, sum(NUM_BLOCKS)))

        def repeat(make_block: Callable[..., nn.Module], num: int, scale: float) -> nn.Sequential:
            return nn.Sequential(*[make_block(conv, scale, next(rates), act_layer) for _ in range(num)])

        scale_a, scale_b, scale_c = residual_scales
        self.repeat = repeat(inception_resnet_a, NUM_BLOCKS[0], scale_a)  # 35x35x256
        self.mixed_6a = ReductionA(conv)  # 17x17x896
        self.repeat_1 = repeat(inception_resnet_b, NUM_BLOCKS[1], scale_b)
        self.mixed_7a = ReductionB(conv)  # 8x8x1792
        self.repeat_2 = repeat(inception_resnet_c, NUM_BLOCKS[2], scale_c)
        self.num_features = self.head_hidden_size = 1792
        self.feature_info = [
            dict(num_chs=64, reduction=2, module="conv2d_2b"),
            dict(num_chs=192, reduction=4, module="conv2d_4a"),
            dict(num_chs=256, reduction=8, module="repeat"),
            dict(num_chs=896, reduction=16, module="repeat_1"),
            dict(num_chs=1792, reduction=32, module="repeat_2"),
        ]
        # average pooling, dropout (keep 0.8), the classifier (Fig. 15)
        self.global_pool, self.head_drop, self.classif = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate
        )

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classif

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        pool_type = self.global_pool.pool_type if global_pool is None else global_pool
        self.global_pool, self.classif = create_classifier(self.num_features, num_classes, pool_type=pool_type)

    def trunk(self) -> list[nn.Module]:
        stem = [self.conv2d_1a, self.conv2d_2a, self.conv2d_2b, self.maxpool_3a, self.conv2d_3b, self.conv2d_4a]
        return [*stem, self.conv2d_4b, self.repeat, self.mixed_6a, self.repeat_1, self.mixed_7a, self.repeat_2]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self.run_stages(x)
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(x))))
        x = self.mixed_6a(self.repeat(x))
        return self.repeat_2(self.mixed_7a(self.repeat_1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.classif(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_inception_resnet_v1(variant: str, pretrained: bool = False, **kwargs: Any) -> InceptionResNetV1:
    return build_model_with_cfg(InceptionResNetV1, variant, pretrained, **kwargs)


PAPER = Paper(
    "Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning",
    "Szegedy, Ioffe, Vanhoucke, Alemi",
    2017,
    "1602.07261",
)


default_cfgs = generate_default_cfgs(
    {
        "inception_resnet_v1": pretrained_cfg(
            input_size=(3, 299, 299),
            pool_size=(8, 8),
            mean=IMAGENET_INCEPTION_MEAN,
            std=IMAGENET_INCEPTION_STD,
            first_conv="conv2d_1a.conv",
            classifier="classif",
            paper_ids="arXiv:1602.07261",
            paper_name=PAPER.title,
        )
    }
)


@register_model
def inception_resnet_v1(pretrained: bool = False, **kwargs: Any) -> InceptionResNetV1:
    """Inception-ResNet-v1 (Szegedy et al. 2017), Fig. 15 with the v1 stem and blocks (Figs. 10-14)."""
    return _create_inception_resnet_v1("inception_resnet_v1", pretrained, **kwargs)


register(
    ModelEntry(
        name="inception_resnet_v1",
        builder="inception_resnet_v1",
        family="inception_v4",
        paper=PAPER,
        params=22_756_328,
        recipe="inception_v4",
        resolution=299,
        min_resolution=75,  # the unpadded stem and reductions: 75 px leave 3x3 into Reduction-B
        top1=78.7,
        top5=94.5,
        protocol="1-crop (Table 2)",
        source="own",
        notes="the paper's v1 stem and blocks; residual scales 0.17 / 0.10 / 0.20 (TF-slim's; Sec. 3.3 leaves them)",
    )
)
