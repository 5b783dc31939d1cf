"""ShuffleNet V2, Ma, Zhang, Zheng & Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
ECCV 2018 (arXiv:1807.11164).

- Unit (Sec. 3, Fig. 3(c), (d)). Stride 1: channel split into two halves; one passes unchanged, the other goes
  through 1x1 conv + BN + ReLU, 3x3 depthwise conv + BN, 1x1 conv + BN + ReLU; concatenate, then channel shuffle
  (g = 2). Stride 2: no split; the left branch is a 3x3/2 depthwise conv + BN and 1x1 conv + BN + ReLU, the right
  the same three convolutions as above with the depthwise one strided; each branch outputs half the channels.
- Network (Table 5): conv1 3x3/2 of 24 + BN + ReLU, 3x3/2 max-pool, stages 2-4 of 4/8/4 units (the first strided),
  conv5 1x1 + BN + ReLU, global average pooling, FC. Stage output channels 48/96/192 (0.5x), 116/232/464 (1x),
  176/352/704 (1.5x), 244/488/976 (2x); conv5 1024, 2048 at 2x. Complexity 41/146/299/591 M FLOPs (mult-adds).

Module names are torchvision's (`conv1`, `maxpool`, `stage2`..`stage4` of units with `branch1`/`branch2`, `conv5`,
`fc`), so its state_dicts load unchanged; the network is torchvision's (FC with bias). The authors' code
(megvii-model/ShuffleNet-Series) adds dropout 0.2 before the FC at 2x only, which `shufflenet_v2_x2_0` does too
(`drop_rate`); its FC has no bias, torchvision's (and so this one's) has. Weights are initialised as in the authors'
code (`init_weights_as_megvii`); torchvision keeps PyTorch's defaults.

`width_mult` scales a variant's stage channels (rounded to the nearest even number: every unit splits or halves
them); conv5 keeps the variant's width, as Table 5 keeps 1024 from 0.5x to 1.5x.
"""

import math
from typing import Any

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, pretrained_cfg, register
from trainer.models.layers.channel_shuffle import ChannelShuffle
from trainer.models.shufflenet_v1 import init_weights_as_megvii
from trainer.models.stages import StagedModel

STAGE_REPEATS = (4, 8, 4)  # Table 5: one stride-2 unit, then 3, 7, 3 stride-1 units
STEM_CHANNELS = 24


def _depthwise(chs: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(chs, chs, 3, stride=stride, padding=1, groups=chs, bias=False)


def _pointwise(in_chs: int, out_chs: int) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 1, bias=False)


class ShuffleV2Unit(nn.Module):
    """Fig. 3(c) (stride 1, channel split) and 3(d) (stride 2, two branches); the output is channel-shuffled."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.stride = stride
        branch_chs = out_chs // 2
        if stride > 1:
            self.branch1: nn.Module | None = nn.Sequential(
                _depthwise(in_chs, stride),
                norm_layer(in_chs),
                _pointwise(in_chs, branch_chs),
                norm_layer(branch_chs),
                act_layer(inplace=True),
            )
        else:
            self.branch1 = None  # the split's first half passes unchanged
        self.branch2 = nn.Sequential(
            _pointwise(in_chs if stride > 1 else branch_chs, branch_chs),
            norm_layer(branch_chs),
            act_layer(inplace=True),
            _depthwise(branch_chs, stride),
            norm_layer(branch_chs),  # no ReLU after the depthwise convolution
            _pointwise(branch_chs, branch_chs),
            norm_layer(branch_chs),
            act_layer(inplace=True),
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1 is None:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out)


class ShuffleNetV2(StagedModel, nn.Module):
    def __init__(
        self,
        stage_channels: tuple[int, ...] = (116, 232, 464),
        head_channels: int = 1024,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if len(stage_channels) != len(STAGE_REPEATS):
            raise ConfigError(f"shufflenet_v2: stage_channels={tuple(stage_channels)} needs 3 stages (Table 5)")
        scaled = [2 * math.floor(c * width_mult / 2 + 0.5) for c in stage_channels]  # even: units split in halves
        if not width_mult > 0 or min(scaled) <= 0:
            raise ConfigError(
                f"shufflenet_v2: width_mult={width_mult} gives {min(scaled)} channels in a stage "
                f"(stage_channels={tuple(stage_channels)})"
            )
        if not 0.0 <= drop_rate < 1.0:
            raise ConfigError(f"shufflenet_v2: drop_rate={drop_rate} is outside [0, 1)")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.conv1 = nn.Sequential(
            nn.Conv2d(in_chans, STEM_CHANNELS, 3, stride=2, padding=1, bias=False),
            norm_layer(STEM_CHANNELS),
            act_layer(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.feature_info = [
            dict(num_chs=STEM_CHANNELS, reduction=2, module="conv1"),
            dict(num_chs=STEM_CHANNELS, reduction=4, module="maxpool"),
        ]
        in_chs, reduction = STEM_CHANNELS, 4
        for number, (chs, repeats) in enumerate(zip(scaled, STAGE_REPEATS, strict=True), start=2):
            units = [ShuffleV2Unit(in_chs, chs, 2, act_layer, norm_layer)]
            units += [ShuffleV2Unit(chs, chs, 1, act_layer, norm_layer) for _ in range(repeats - 1)]
            self.add_module(f"stage{number}", nn.Sequential(*units))
            in_chs, reduction = chs, reduction * 2
            if number < 4:  # stage 4's level is conv5's output
                self.feature_info.append(dict(num_chs=chs, reduction=reduction, module=f"stage{number}"))
        self.conv5 = nn.Sequential(
            nn.Conv2d(in_chs, head_channels, 1, bias=False),
            norm_layer(head_channels),
            act_layer(inplace=True),
        )
        self.feature_info.append(dict(num_chs=head_channels, reduction=reduction, module="conv5"))
        self.num_features = self.head_hidden_size = head_channels
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(head_channels, num_classes) if num_classes > 0 else nn.Identity()
        init_weights_as_megvii(self, self.conv1[0])

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.normal_(self.fc.weight, 0.0, 0.01)
            nn.init.zeros_(self.fc.bias)

    def trunk(self) -> list[nn.Module]:
        return [self.conv1, self.maxpool, self.stage2, self.stage3, self.stage4, self.conv5]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self.run_stages(x)
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.stage4(self.stage3(self.stage2(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_shufflenet_v2(variant: str, pretrained: bool = False, **kwargs: Any) -> ShuffleNetV2:
    return build_model_with_cfg(
        ShuffleNetV2,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=False, out_indices=(0, 1, 2, 3, 4)),
        **kwargs,
    )


# Table 5: stage 2-4 output channels and conv5's, per width; the authors' code drops out 0.2 before the FC at 2x
VARIANTS = {
    "shufflenet_v2_x0_5": dict(stage_channels=(48, 96, 192), head_channels=1024),
    "shufflenet_v2_x1_0": dict(stage_channels=(116, 232, 464), head_channels=1024),
    "shufflenet_v2_x1_5": dict(stage_channels=(176, 352, 704), head_channels=1024),
    "shufflenet_v2_x2_0": dict(stage_channels=(244, 488, 976), head_channels=2048, drop_rate=0.2),
}

PAPER = Paper(
    "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
    "Ma, Zhang, Zheng, Sun",
    2018,
    "1807.11164",
)


default_cfgs = generate_default_cfgs(
    {
        name: pretrained_cfg(
            first_conv="conv1.0",
            classifier="fc",
            paper_ids="arXiv:1807.11164",
            paper_name=PAPER.title,
        )
        for name in VARIANTS
    }
)


def _build(variant: str, pretrained: bool, **kwargs: Any) -> ShuffleNetV2:
    return _create_shufflenet_v2(variant, pretrained, **dict(VARIANTS[variant], **kwargs))


@register_model
def shufflenet_v2_x0_5(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV2:
    """ShuffleNet V2 0.5x (Table 5)."""
    return _build("shufflenet_v2_x0_5", pretrained, **kwargs)


@register_model
def shufflenet_v2_x1_0(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV2:
    """ShuffleNet V2 1x (Table 5)."""
    return _build("shufflenet_v2_x1_0", pretrained, **kwargs)


@register_model
def shufflenet_v2_x1_5(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV2:
    """ShuffleNet V2 1.5x (Table 5)."""
    return _build("shufflenet_v2_x1_5", pretrained, **kwargs)


@register_model
def shufflenet_v2_x2_0(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV2:
    """ShuffleNet V2 2x (Table 5): conv5 of 2048, dropout 0.2 before the FC (the authors' code)."""
    return _build("shufflenet_v2_x2_0", pretrained, **kwargs)


# name -> (params at 1000 classes, top-1, top-5, the paper's mult-adds in millions). Top-1 = 100 - Table 8's error
# (39.7, 30.6, 27.4, 25.1). The paper gives no top-5; the authors' README gives 11.1 (1x) and 9.4 (1.5x) top-5 error
# for models whose top-1 error equals the paper's, and other top-1 errors at 0.5x (38.9) and 2x (25.0).
PAPER_NUMBERS = {
    "shufflenet_v2_x0_5": (1_366_792, 60.3, None, 41),
    "shufflenet_v2_x1_0": (2_278_604, 69.4, 88.9, 146),
    "shufflenet_v2_x1_5": (3_503_624, 72.6, 90.6, 299),
    "shufflenet_v2_x2_0": (7_393_996, 74.9, None, 591),
}

for _name, (_params, _top1, _top5, _) in PAPER_NUMBERS.items():
    register(
        ModelEntry(
            name=_name,
            builder=_name,
            family="shufflenet_v2",
            paper=PAPER,
            params=_params,
            recipe="shufflenet_v2",
            min_resolution=32,
            top1=_top1,
            top5=_top5,
            protocol="1-crop (Table 8)" + ("; top-5 from the authors' README" if _top5 is not None else ""),
            source="own",
            notes="torchvision's network and module names",
        )
    )
