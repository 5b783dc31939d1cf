"""ShuffleNet (v1), Zhang, Zhou, Lin & Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
Mobile Devices", CVPR 2018 (arXiv:1707.01083).

- ShuffleNet unit (Sec. 3.2, Fig. 2): 1x1 group convolution + BN + ReLU, channel shuffle, 3x3 depthwise convolution
  (stride s) + BN, 1x1 group convolution + BN. Stride 1: add the input, then ReLU. Stride 2: concatenate a 3x3/2
  average-pooled shortcut, then ReLU. The bottleneck is 1/4 of the unit's output channels (Sec. 3.3).
- Network (Table 1): conv1 3x3/2 of 24 + BN + ReLU, 3x3/2 max-pool, stages 2-4 of 4/8/4 units whose first unit has
  stride 2, global average pooling, FC. Stage 2's first pointwise convolution is not grouped ("the number of input
  channels is relatively small"). Stage output channels for g = 1, 2, 3, 4, 8 as in Table 1.
- "ShuffleNet s x" (Sec. 4.1.1, Table 2) scales the channels by s; `width_mult` here.

Readings where the paper is ambiguous, taken from the authors' code (megvii-model/ShuffleNet-Series, ShuffleNetV1):
- Scaled stage channels are rounded to the nearest multiple of 4g (half up), so the bottleneck (1/4) divides into g
  groups; Table 1's 1x channels and the authors' 0.5x/1.5x/2x channels for g = 3 and 8 are already such multiples.
- conv1 is not simply scaled: the authors' code has 12 channels at 0.5x, 24 at 1x and 1.5x, 48 at 2x (rounded up to
  a multiple of g: 16 at 0.5x for g = 8). Those give Table 5's 292 M (1.5x) and 524 M (2x) mult-adds where 24 * s
  would give 300 M at 1.5x; 0.25x (not in the code) takes 12, which gives Table 2's 13 M (6 would give 11 M).
- The stride-2 unit's main branch outputs (out - in) channels so the concatenation has `out`, and its bottleneck is
  1/4 of `out` (the authors' code). The shortcut is concatenated before the main branch.
- The shuffle sits after the first pointwise convolution's ReLU (Fig. 2); the authors' code shuffles after the
  depthwise convolution instead, which is the same network up to an order of the depthwise filters. It is the
  paper's permutation (`ChannelShuffle`); the code's reshape (n, g) is its inverse, again the same up to an order.
- The classifier has no bias, and weights are initialised as in the authors' code: convolutions normal with standard
  deviation 1 / (input channels per group) (their "1.0 / weight.shape[1]") except conv1 N(0, 0.01), BN weight 1 and
  bias 1e-4, FC N(0, 0.01).
- Complexity: the paper's FLOPs are multiply-adds (1x g=3 about 140 M, Table 2); Table 1's are 143/140/137/133/137 M
  for g = 1/2/3/4/8; the tests compare.
"""

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, pretrained_cfg, register
from trainer.models.layers.channel_shuffle import ChannelShuffle
from trainer.models.stages import StagedModel

# Table 1: output channels of stages 2, 3, 4 of ShuffleNet 1x, per number of groups g
STAGE_CHANNELS = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
STAGE_REPEATS = (4, 8, 4)  # Table 1: one stride-2 unit, then 3, 7, 3 stride-1 units
# conv1's channels at the scales the authors trained (their code: 0.5x 12, 1x and 1.5x 24, 2x 48; 0.25x 12, which
# gives Table 2's 13 M mult-adds where 6 gives 11 M); other scales take 24 * s
STEM_CHANNELS = {0.25: 12, 0.5: 12, 1.0: 24, 1.5: 24, 2.0: 48}


def _round_half_up(value: float, divisor: int) -> int:
    return math.floor(value / divisor + 0.5) * divisor


def stage_channels(groups: int, width_mult: float) -> tuple[int, tuple[int, ...]]:
    """(conv1 channels, stage 2-4 output channels) of ShuffleNet `width_mult` x with g = `groups`.

    Stages: Table 1's channels times s, rounded to the nearest multiple of 4g, so the 1/4 bottleneck splits into g
    groups. conv1: `STEM_CHANNELS`, rounded up to a multiple of g (stage 2's first unit adds it to a grouped branch).
    """
    if groups not in STAGE_CHANNELS:
        raise ConfigError(f"shufflenet_v1: groups={groups} is not one of {', '.join(map(str, STAGE_CHANNELS))}")
    stages = tuple(_round_half_up(c * width_mult, 4 * groups) for c in STAGE_CHANNELS[groups])
    if not width_mult > 0 or min(stages) <= 0:
        raise ConfigError(
            f"shufflenet_v1: width_mult={width_mult} gives 0 channels in a stage at groups={groups} "
            f"(a stage needs at least {4 * groups})"
        )
    stem = max(groups, math.ceil(STEM_CHANNELS.get(width_mult, 24 * width_mult) / groups) * groups)
    if stages[0] <= stem:  # stage 2's first unit outputs (stage 2 - conv1) channels beside its shortcut
        raise ConfigError(
            f"shufflenet_v1: width_mult={width_mult} gives stage 2 {stages[0]} channels, not more than conv1's {stem}"
        )
    return stem, stages


class ShuffleUnit(nn.Module):
    """Fig. 2(b) (stride 1) and 2(c) (stride 2). `first_groups` is the first pointwise convolution's group count."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int,
        groups: int,
        first_groups: int,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.stride = stride
        mid_chs = out_chs // 4  # Sec. 3.3: bottleneck = 1/4 of the unit's output channels
        branch_chs = out_chs - in_chs if stride == 2 else out_chs  # stride 2: the shortcut brings in_chs
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, groups=first_groups, bias=False)
        self.bn1 = norm_layer(mid_chs)
        self.act1 = act_layer(inplace=True)
        self.shuffle = ChannelShuffle(groups)
        self.conv2 = nn.Conv2d(mid_chs, mid_chs, 3, stride=stride, padding=1, groups=mid_chs, bias=False)
        self.bn2 = norm_layer(mid_chs)  # no ReLU after the depthwise convolution (Sec. 3.2)
        self.conv3 = nn.Conv2d(mid_chs, branch_chs, 1, groups=groups, bias=False)
        self.bn3 = norm_layer(branch_chs)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.act = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle(self.act1(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        if self.stride == 1:
            return self.act(out + x)
        return self.act(torch.cat([self.shortcut(x), out], dim=1))


def init_weights_as_megvii(model: nn.Module, first_conv: nn.Module) -> None:
    """The authors' init (ShuffleNet-Series, v1 and v2): convolutions normal with std 1 / weight.shape[1] (input
    channels per group), the first one std 0.01; BN weight 1, bias 1e-4; linear layers N(0, 0.01), zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.01 if m is first_conv else 1.0 / m.weight.shape[1])
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, 1e-4)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ShuffleNetV1(StagedModel, nn.Module):
    def __init__(
        self,
        groups: int = 3,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        stem_chs, out_chs = stage_channels(groups, width_mult)
        if not 0.0 <= drop_rate < 1.0:
            raise ConfigError(f"shufflenet_v1: drop_rate={drop_rate} is outside [0, 1)")
        self.groups, self.width_mult = groups, width_mult
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_chans, stem_chs, 3, stride=2, padding=1, bias=False),
                bn=norm_layer(stem_chs),
                act=act_layer(inplace=True),
            )
        )
        self.stem_pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info = [
            dict(num_chs=stem_chs, reduction=2, module="stem.act"),
            dict(num_chs=stem_chs, reduction=4, module="stem_pool"),
        ]
        stages, in_chs, reduction = [], stem_chs, 4
        for index, (chs, repeats) in enumerate(zip(out_chs, STAGE_REPEATS, strict=True)):
            units = []
            for i in range(repeats):
                first_groups = 1 if index == 0 and i == 0 else groups  # Sec. 3.3: stage 2's first 1x1 ungrouped
                units.append(ShuffleUnit(in_chs, chs, 2 if i == 0 else 1, groups, first_groups, act_layer, norm_layer))
                in_chs = chs
            stages.append(nn.Sequential(*units))
            reduction *= 2
            self.feature_info.append(dict(num_chs=chs, reduction=reduction, module=f"stages.{index}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = self._fc(num_classes)
        init_weights_as_megvii(self, self.stem.conv)

    def _fc(self, num_classes: int) -> nn.Module:
        # the authors' classifier has no bias
        return nn.Linear(self.num_features, num_classes, bias=False) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.fc = self._fc(num_classes)
        if num_classes > 0:
            nn.init.normal_(self.fc.weight, 0.0, 0.01)

    def trunk(self) -> list[nn.Module]:
        return [self.stem, self.stem_pool, *self.stages]

    def feature_ends(self) -> list[int]:
        return list(range(len(self.feature_info)))  # stem.act ends the stem, then one level per module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self.run_stages(x)
        return self.stages(self.stem_pool(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_shufflenet_v1(variant: str, pretrained: bool = False, **kwargs: Any) -> ShuffleNetV1:
    return build_model_with_cfg(
        ShuffleNetV1,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3, 4)),
        **kwargs,
    )


# registered name -> (groups g, scale s): every g at 1x (Table 2), and g = 3 at the other scales (Tables 2 and 5)
VARIANTS = {
    "shufflenet_v1_g1_1_0": (1, 1.0),
    "shufflenet_v1_g2_1_0": (2, 1.0),
    "shufflenet_v1_g3_1_0": (3, 1.0),
    "shufflenet_v1_g4_1_0": (4, 1.0),
    "shufflenet_v1_g8_1_0": (8, 1.0),
    "shufflenet_v1_g3_0_25": (3, 0.25),
    "shufflenet_v1_g3_0_5": (3, 0.5),
    "shufflenet_v1_g3_1_5": (3, 1.5),
    "shufflenet_v1_g3_2_0": (3, 2.0),
}

PAPER = Paper(
    "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices",
    "Zhang, Zhou, Lin, Sun",
    2018,
    "1707.01083",
)


default_cfgs = generate_default_cfgs(
    {
        name: pretrained_cfg(
            first_conv="stem.conv",
            classifier="fc",
            paper_ids="arXiv:1707.01083",
            paper_name=PAPER.title,
        )
        for name in VARIANTS
    }
)


def _build(variant: str, pretrained: bool, **kwargs: Any) -> ShuffleNetV1:
    groups, width_mult = VARIANTS[variant]
    return _create_shufflenet_v1(variant, pretrained, **dict(dict(groups=groups, width_mult=width_mult), **kwargs))


@register_model
def shufflenet_v1_g1_1_0(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV1:
    """ShuffleNet 1x, g = 1 (no group convolutions, no shuffle)."""
    return _build("shufflenet_v1_g1_1_0", pretrained, **kwargs)


@register_model
def shufflenet_v1_g2_1_0(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV1:
    """ShuffleNet 1x, g = 2."""
    return _build("shufflenet_v1_g2_1_0", pretrained, **kwargs)


@register_model
def shufflenet_v1_g3_1_0(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV1:
    """ShuffleNet 1x, g = 3: the paper's main network."""
    return _build("shufflenet_v1_g3_1_0", pretrained, **kwargs)


@register_model
def shufflenet_v1_g4_1_0(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV1:
    """ShuffleNet 1x, g = 4."""
    return _build("shufflenet_v1_g4_1_0", pretrained, **kwargs)


@register_model
def shufflenet_v1_g8_1_0(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV1:
    """ShuffleNet 1x, g = 8."""
    return _build("shufflenet_v1_g8_1_0", pretrained, **kwargs)


@register_model
def shufflenet_v1_g3_0_25(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV1:
    """ShuffleNet 0.25x, g = 3."""
    return _build("shufflenet_v1_g3_0_25", pretrained, **kwargs)


@register_model
def shufflenet_v1_g3_0_5(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV1:
    """ShuffleNet 0.5x, g = 3."""
    return _build("shufflenet_v1_g3_0_5", pretrained, **kwargs)


@register_model
def shufflenet_v1_g3_1_5(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV1:
    """ShuffleNet 1.5x, g = 3."""
    return _build("shufflenet_v1_g3_1_5", pretrained, **kwargs)


@register_model
def shufflenet_v1_g3_2_0(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV1:
    """ShuffleNet 2x, g = 3."""
    return _build("shufflenet_v1_g3_2_0", pretrained, **kwargs)


# name -> (params at 1000 classes, the paper's top-1 accuracy, its table, the paper's mult-adds in millions).
# Top-1 = 100 - Table 2's error (1x: 33.6/32.7/32.6/32.8/32.4 for g = 1/2/3/4/8; g = 3: 0.5x 43.2, 0.25x 55.0) or
# Table 5's (g = 3: 1.5x 28.5, 2x 26.3); the paper gives no top-5. Mult-adds: Table 1 at 1x (per g), Table 2 at
# 0.5x and 0.25x (38 M, 13 M), Table 5 at 1.5x and 2x.
PAPER_NUMBERS = {
    "shufflenet_v1_g1_1_0": (1_530_936, 66.4, "Table 2", 143),
    "shufflenet_v1_g2_1_0": (1_732_848, 67.3, "Table 2", 140),
    "shufflenet_v1_g3_1_0": (1_864_728, 67.4, "Table 2", 137),
    "shufflenet_v1_g4_1_0": (1_967_344, 67.2, "Table 2", 133),
    "shufflenet_v1_g8_1_0": (2_433_768, 67.6, "Table 2", 137),
    "shufflenet_v1_g3_0_25": (305_124, 45.0, "Table 2", 13),
    "shufflenet_v1_g3_0_5": (717_324, 56.8, "Table 2", 38),
    "shufflenet_v1_g3_1_5": (3_441_168, 71.5, "Table 5", 292),
    "shufflenet_v1_g3_2_0": (5_449_776, 73.7, "Table 5", 524),
}

for _name, (_params, _top1, _table, _) in PAPER_NUMBERS.items():
    register(
        ModelEntry(
            name=_name,
            builder=_name,
            family="shufflenet_v1",
            paper=PAPER,
            params=_params,
            recipe="shufflenet_v1",
            min_resolution=32,
            top1=_top1,
            protocol=f"1-crop ({_table})",
            source="own",
            notes="channels rounded to multiples of 4g; classifier without bias (authors' code)",
        )
    )
