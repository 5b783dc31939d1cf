"""Darknet classifiers: Darknet-19 (YOLOv2's backbone) and Darknet-53 (YOLOv3's).

Darknet-19: Redmon & Farhadi, "YOLO9000: Better, Faster, Stronger", CVPR 2017 (arXiv:1612.08242), Sec. 3 and
Table 6, written here (timm has none) as the authors' release cfg/darknet19.cfg builds it:
- 19 convolutional layers and 5 max-pools: 3x3 convolutions, with 1x1 convolutions that halve the channels between
  them, channels doubling after each 2x2/2 max-pool (32, 64, 128-64-128, 256-128-256, 512-256-512-256-512,
  1024-512-1024-512-1024), "same" padding;
- batch norm and leaky ReLU (slope 0.1, Darknet's `leaky`) after every convolution but the last; the last is the
  classifier, a 1x1 convolution to 1000 channels with a bias and no activation, then global average pooling (the
  softmax is the loss's). The head keeps that order (the classifier runs on the 7x7 map, as in the paper's count of
  operations; it commutes with the average pool, so the logits are the same either way); `pre_logits` is the
  pooled 1024-channel map;
- Darknet's max-pool pads the right and bottom edge (padding size - 1), so an odd map rounds up: `ceil_mode`;
- "5.58 billion operations" at 224 px (Table 6): Darknet counts a multiply and an add as two operations, so this is
  2 x 2.79 G multiply-adds (YOLOv3's Table 2 gives the same network 7.29 B operations at 256 px, (256/224)^2 times
  as many). The paper gives no parameter count;
- weights initialised as Darknet does: N(0, 2 / fan_in) (He), zero biases.
`darknet19_448` is the same network fine-tuned and evaluated at 448 px (Sec. 3: 10 epochs at 448, 76.5 / 93.3 %).
Eval crop 1.0: the authors' `classifier valid` crops the central square of the shorter side and resizes it to the
network's input; the paper says only "single crop". Input: Darknet feeds RGB in [0, 1] (mean 0, std 1).

Darknet-53: Redmon & Farhadi, "YOLOv3: An Incremental Improvement", 2018 (arXiv:1804.02767). timm's `darknet53` is
the paper's Table 1 network (52 convolutions in five residual stages, leaky ReLU, BN, no pooling: strided 3x3
convolutions downsample; timm's leaky slope is 0.01, Darknet's 0.1). Input 256 px: the paper's Table 2 classifiers
are "tested at 256x256, single crop"; eval crop 0.875 (timm's cfg says 0.887). Accuracy: Table 2, 77.2 / 93.8 top-1 /
top-5 at 256 px, single crop.

Recipe: Darknet-53's paper gives none of its own ("each network is trained with identical settings", Table 2), and
those settings are Darknet's ImageNet classifier recipe published with Darknet-19 (YOLO9000 Sec. 3: SGD, polynomial
decay of power 4, weight decay 5e-4, momentum 0.9). So both name the `darknet19` recipe.
"""

from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import ConvNormAct, SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, pretrained_cfg, register
from trainer.models.stages import StagedModel

# Table 6: (filters, kernel size) of the convolutions of each stage; a 2x2/2 max-pool starts every stage but the first
DARKNET19_STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((32, 3),),
    ((64, 3),),
    ((128, 3), (64, 1), (128, 3)),
    ((256, 3), (128, 1), (256, 3)),
    ((512, 3), (256, 1), (512, 3), (256, 1), (512, 3)),
    ((1024, 3), (512, 1), (1024, 3), (512, 1), (1024, 3)),
)
LEAKY_SLOPE = 0.1  # Darknet's `leaky` activation


class Darknet19(StagedModel, nn.Module):
    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        act_layer: Callable[..., nn.Module] = partial(nn.LeakyReLU, negative_slope=LEAKY_SLOPE),
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_rate < 1.0:
            raise ConfigError(f"darknet19: drop_rate={drop_rate} is outside [0, 1)")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        conv = partial(ConvNormAct, act_layer=act_layer, norm_layer=norm_layer)
        ((chs, kernel_size),) = DARKNET19_STAGES[0]
        self.stem = conv(in_chans, chs, kernel_size)  # full resolution
        self.feature_info = []
        stage_modules = []
        for i, stage in enumerate(DARKNET19_STAGES[1:]):
            layers: OrderedDict[str, nn.Module] = OrderedDict(pool=nn.MaxPool2d(2, 2, ceil_mode=True))
            for j, (out_chs, kernel_size) in enumerate(stage):
                layers[f"conv{j + 1}"] = conv(chs, out_chs, kernel_size)
                chs = out_chs
            stage_modules.append(nn.Sequential(layers))
            self.feature_info.append(dict(num_chs=chs, reduction=2 ** (i + 1), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stage_modules)
        self.num_features = self.head_hidden_size = chs
        self.head_drop = nn.Dropout(drop_rate)  # Darknet-19 has none; kept for the common interface
        self.fc = self._classifier(num_classes)
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self._init_weights()

    def _classifier(self, num_classes: int) -> nn.Module:
        # Table 6's last convolution: 1x1 to the classes, with a bias, no BN, linear activation
        return nn.Conv2d(self.num_features, num_classes, 1) if num_classes > 0 else nn.Identity()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # Darknet: scale sqrt(2 / (k * k * c_in)) times N(0, 1)
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.fc = self._classifier(num_classes)

    def trunk(self) -> list[nn.Module]:
        return [self.stem, *self.stages]

    def feature_ends(self) -> list[int]:
        return list(range(1, len(self.stages) + 1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self.run_stages(x)
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            return self.global_pool(x)
        return self.global_pool(self.fc(self.head_drop(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_darknet19(variant: str, pretrained: bool = False, **kwargs: Any) -> Darknet19:
    return build_model_with_cfg(
        Darknet19,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3, 4)),
        **kwargs,
    )


PAPER_YOLOV2 = Paper("YOLO9000: Better, Faster, Stronger", "Redmon, Farhadi", 2017, "1612.08242")
PAPER = Paper("YOLOv3: An Incremental Improvement", "Redmon, Farhadi", 2018, "1804.02767")


default_cfgs = generate_default_cfgs(
    {
        "darknet19": pretrained_cfg(
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            crop_pct=1.0,
            first_conv="stem.conv",
            classifier="fc",
            paper_ids="arXiv:1612.08242",
            paper_name=PAPER_YOLOV2.title,
        )
    }
)


@register_model
def darknet19(pretrained: bool = False, **kwargs: Any) -> Darknet19:
    """Darknet-19 (YOLO9000, Table 6)."""
    return _create_darknet19("darknet19", pretrained, **kwargs)


register(
    ModelEntry(
        name="darknet53",
        builder="darknet53",
        family="darknet",
        paper=PAPER,
        params=41_609_928,
        recipe="darknet19",
        resolution=256,
        top1=77.2,
        top5=93.8,
        protocol="1-crop at 256 (Table 2)",
        notes="trained with Darknet-19's recipe (the paper: 'identical settings'); timm's leaky ReLU slope 0.01",
    )
)

for _name, _resolution, _top1, _top5, _protocol in (
    ("darknet19", 224, 72.9, 91.2, "1-crop at 224 (Sec. 3)"),
    ("darknet19_448", 448, 76.5, 93.3, "1-crop at 448 after 10 epochs of fine-tuning at 448 (Sec. 3)"),
):
    register(
        ModelEntry(
            name=_name,
            builder="darknet19",
            family="darknet",
            paper=PAPER_YOLOV2,
            params=20_842_376,
            recipe="darknet19",
            resolution=_resolution,
            crop_ratio=1.0,
            top1=_top1,
            top5=_top5,
            protocol=_protocol,
            source="own",
            notes="one network at two resolutions; 5.58 B operations (2 per multiply-add) at 224 px (Table 6)",
        )
    )
