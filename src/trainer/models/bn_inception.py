"""BN-Inception (Inception v2), Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing
Internal Covariate Shift", ICML 2015 (arXiv:1502.03167).

The network of the paper's Appendix (Figure 5, "Variant of the Inception Model Used") with batch normalisation
after every convolution (Sec. 4.2: "Inception with Batch Normalization before each nonlinearity"):
- convolutions have no bias (Sec. 3.2: BN's shift replaces it), BN then ReLU; no LRN (Sec. 4.2.1 removes it);
- stem: conv 7x7/2 (64), max-pool 3x3/2, conv 1x1 (64), conv 3x3 (192), max-pool 3x3/2;
- the 5x5 convolutions of GoogLeNet become two 3x3 ("double #3x3" branch); three 28x28 modules (3a, 3b, 3c);
  average or max pooling in the pool branch as the table says; no pooling layers between modules: 3c and 4e stride
  by 2 themselves (3x3 convolutions with stride 2 and a 3x3/2 max-pool passed through unprojected);
- a global average pool (the table's 7x7 at 224) and a linear classifier, the only fully-connected layer (Sec. 4.2).

Readings where the paper is ambiguous:
- First convolution: the appendix says "Our model employed separable convolution with depth multiplier 8 on the
  first convolutional layer", so conv1 is a depthwise 7x7/2 (3 -> 24 maps) then a pointwise 1x1 (24 -> 64), with
  one BN + ReLU after (TensorFlow's separable_conv2d). `separable_stem=False` gives a plain 7x7 convolution (as the
  Caffe release of BN-Inception has).
- Channels: the table's output column says 576 for 4c and 4d, but their branches add up to 160+160+160+128 = 608 and
  96+192+192+128 = 608; we follow the branch columns (as the Caffe release does), so 4e passes 608 maps through and
  outputs 192+256+608 = 1056 (the table: 1024), and 5a takes 1056 maps in.
- Parameters: Sec. 4.2 states 13.6 M; the table gives 11,278,528 (with BN's scale and shift and the 1000-way
  classifier; 10.23 M convolution weights); auxiliary classifiers (which the table does not list) would add about
  3.2 M each, so neither reading gives 13.6 M. Nor does the appendix's "+25% parameters" over GoogLeNet's 6.8 M;
  its "+30% computation" does hold: 1.95 G multiply-adds against GoogLeNet's 1.5 G.
- Auxiliary classifiers: neither the table nor the text has any (nor the widely used Caffe port); none here.
- Dropout: 0 by default (Sec. 4.2.1 removes dropout for BN-x5/BN-x30; the ensemble members used 5% or 10%).
- Pooling: the stride-2 max-pools pad by 1 (output ceil(n / 2), as the stride-2 3x3 convolutions beside them, so the
  branches of 3c and 4e always agree); the 3x3/1 average pools inside modules average over real pixels only
  (TensorFlow's 'SAME' pooling). BN epsilon 0.001 (TensorFlow's Inception models'; the paper gives none).
- Initialisation: the paper gives none; He (fan-out) normal for convolutions, BN scale 1 and shift 0.

Accuracy: the single network, single crop, of Figure 4 (ensemble table, Sec. 4.2.3): 25.2% top-1 and 7.82% top-5
error, i.e. 74.8 / 92.18 (the same 74.8% top-1 as BN-x30's maximum validation accuracy in Sec. 4.2.2).
"""

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, pretrained_cfg, register
from trainer.models.googlenet import ConvBlock
from trainer.models.stages import StagedModel

# Figure 5: module -> (#1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool, pool proj, stride);
# stride-2 modules have no 1x1 branch and pass the max-pooled input through (proj 0)
INCEPTION_CHANNELS: dict[str, tuple[int, int, int, int, int, str, int, int]] = {
    "3a": (64, 64, 64, 64, 96, "avg", 32, 1),
    "3b": (64, 64, 96, 64, 96, "avg", 64, 1),
    "3c": (0, 128, 160, 64, 96, "max", 0, 2),
    "4a": (224, 64, 96, 96, 128, "avg", 128, 1),
    "4b": (192, 96, 128, 96, 128, "avg", 128, 1),
    "4c": (160, 128, 160, 128, 160, "avg", 128, 1),
    "4d": (96, 128, 192, 160, 192, "avg", 128, 1),
    "4e": (0, 128, 192, 192, 256, "max", 0, 2),
    "5a": (352, 192, 320, 160, 224, "avg", 128, 1),
    "5b": (352, 192, 320, 192, 224, "max", 128, 1),
}
DEPTH_MULTIPLIER = 8  # Appendix: the separable first convolution


class SeparableConvBlock(nn.Module):
    """Depthwise k x k (depth multiplier m), pointwise 1x1, then one norm + ReLU (TensorFlow's separable_conv2d).
    `conv` is the first (depthwise) convolution, as in ConvBlock."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        depth_multiplier: int = DEPTH_MULTIPLIER,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        mid_chs = in_chs * depth_multiplier
        self.conv = nn.Conv2d(in_chs, mid_chs, kernel_size, stride, padding, groups=in_chs, bias=False)
        self.conv_pw = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn = norm_layer(out_chs)
        self.act = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv_pw(self.conv(x))))


class InceptionBN(nn.Module):
    """A Figure 5 module: [1x1] | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | pool 3x3 -> [1x1 proj], concatenated. With
    stride 2 the last 3x3 of both conv branches and the max-pool stride by 2 and the pool branch is not projected."""

    def __init__(
        self,
        in_chs: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        dbl3x3red: int,
        dbl3x3: int,
        pool: str,
        pool_proj: int,
        stride: int = 1,
        conv_block: Callable[..., nn.Module] = ConvBlock,
    ) -> None:
        super().__init__()
        self.branch1 = conv_block(in_chs, ch1x1, 1) if ch1x1 else None
        self.branch2 = nn.Sequential(
            conv_block(in_chs, ch3x3red, 1), conv_block(ch3x3red, ch3x3, 3, stride=stride, padding=1)
        )
        self.branch3 = nn.Sequential(
            conv_block(in_chs, dbl3x3red, 1),
            conv_block(dbl3x3red, dbl3x3, 3, padding=1),
            conv_block(dbl3x3, dbl3x3, 3, stride=stride, padding=1),
        )
        pool_layer = (
            nn.MaxPool2d(3, stride=stride, padding=1)
            if pool == "max"
            else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        )
        self.branch4 = nn.Sequential(pool_layer, conv_block(in_chs, pool_proj, 1)) if pool_proj else pool_layer
        self.out_chs = ch1x1 + ch3x3 + dbl3x3 + (pool_proj or in_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1 is None:
            return torch.cat([self.branch2(x), self.branch3(x), self.branch4(x)], 1)
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class BNInception(StagedModel, nn.Module):
    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        separable_stem: bool = True,
        norm_layer: Callable[[int], nn.Module] = partial(nn.BatchNorm2d, eps=0.001),
        act_layer: type[nn.Module] = nn.ReLU,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_rate < 1.0:
            raise ConfigError(f"bn_inception: drop_rate={drop_rate} is outside [0, 1)")
        if num_classes < 0 or in_chans < 1:
            raise ConfigError(f"bn_inception: num_classes={num_classes}, in_chans={in_chans} must be >= 0 and >= 1")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        conv_block = partial(ConvBlock, norm_layer=norm_layer, act_layer=act_layer)

        stem_conv = (
            partial(SeparableConvBlock, norm_layer=norm_layer, act_layer=act_layer) if separable_stem else conv_block
        )
        self.conv1 = stem_conv(in_chans, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = conv_block(64, 64, 1)  # Figure 5: "#3x3 reduce 64"
        self.conv3 = conv_block(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, padding=1)
        chs = 192
        for stage, (*widths, pool, proj, stride) in INCEPTION_CHANNELS.items():
            block = InceptionBN(chs, *widths, pool, proj, stride=stride, conv_block=conv_block)
            setattr(self, f"inception{stage}", block)
            chs = block.out_chs
        self.num_features = self.head_hidden_size = chs  # 1024

        # Figure 5's 7x7 average pool at 224
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(chs, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [
            dict(num_chs=64, reduction=2, module="conv1"),
            dict(num_chs=192, reduction=4, module="conv3"),
            dict(num_chs=self.inception3b.out_chs, reduction=8, module="inception3b"),
            dict(num_chs=self.inception4d.out_chs, reduction=16, module="inception4d"),
            dict(num_chs=chs, reduction=32, module="inception5b"),
        ]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for `num_classes`; `global_pool` as timm's ('' for none)."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def trunk(self) -> list[nn.Module]:
        stem = [self.conv1, self.maxpool1, self.conv2, self.conv3, self.maxpool2]
        return stem + [getattr(self, f"inception{stage}") for stage in INCEPTION_CHANNELS]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self.run_stages(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.inception3c(self.inception3b(self.inception3a(x)))
        x = self.inception4e(self.inception4d(self.inception4c(self.inception4b(self.inception4a(x)))))
        return self.inception5b(self.inception5a(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_bn_inception(variant: str, pretrained: bool = False, **kwargs: Any) -> BNInception:
    return build_model_with_cfg(
        BNInception,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3, 4)),
        **kwargs,
    )


PAPER = Paper(
    "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift",
    "Ioffe, Szegedy",
    2015,
    "1502.03167",
)


default_cfgs = generate_default_cfgs(
    {
        "bn_inception": pretrained_cfg(
            first_conv="conv1.conv",
            classifier="fc",
            paper_ids="arXiv:1502.03167",
            paper_name=PAPER.title,
        )
    }
)


@register_model
def bn_inception(pretrained: bool = False, **kwargs: Any) -> BNInception:
    """BN-Inception (Ioffe & Szegedy 2015), the Appendix's network with its separable first convolution."""
    return _create_bn_inception("bn_inception", pretrained, **kwargs)


register(
    ModelEntry(
        name="bn_inception",
        builder="bn_inception",
        family="bn_inception",
        paper=PAPER,
        params=11_278_528,
        recipe="bn_inception",
        min_resolution=32,
        top1=74.8,
        top5=92.18,
        protocol="1 model, 1 crop (Figure 4: 25.2 / 7.82% error)",
        source="own",
        notes=(
            "Figure 5's network with the separable first conv; 4c/4d give 608 maps (the branch columns) where the "
            "table's output column says 576; the paper's 13.6 M parameters do not follow from its table"
        ),
    )
)
