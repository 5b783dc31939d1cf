"""Pre-activation ResNet, He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016
(arXiv:1603.05027).

ImageNet: timm's `resnetv2_50` / `resnetv2_101` are the paper's full pre-activation bottleneck units (Fig. 4e: BN-ReLU
before each convolution, a clean identity path, a final BN-ReLU after the last unit), with the plain 7x7 stem; the
`resnetv2_*x*` models are BiT's (GroupNorm + weight standardisation) and the `d`/`t` ones change the stem, so neither
is used. As in timm's ResNet, the downsampling stride sits on the 3x3 convolution. The paper reports ImageNet only
for ResNet-152/200 (Table 5), so these entries carry no paper accuracy.

CIFAR: ResNet-164 and ResNet-1001 (Sec. 4.1, Tables 3-4), which timm lacks, written here after the authors' code
(github.com/KaimingHe/resnet-1k-layers, `resnet-pre-act.lua`):
- a 3x3 convolution to 16 channels (no BN-ReLU, no pooling), three stages of n bottleneck units at 32, 16 and 8 px
  with outputs 64, 128, 256 (bottlenecks 16, 32, 64), a final BN-ReLU, global average pooling and the classifier;
  depth = 9n + 2 counts the stem, the 9n branch convolutions and the classifier (not the 1x1 projections);
- the first unit of each stage changes the shape: its BN-ReLU is applied once to the unit's input and feeds both the
  branch and a 1x1 projection shortcut (the code's "common BN, ReLU"); every other unit has an identity shortcut;
- the stride sits on the first 1x1 convolution of the unit, as in the code (timm's ImageNet units put it on the 3x3);
- convolutions without bias, initialised N(0, 2 / (k^2 * out_channels)); BN weight 1, bias 0; classifier bias 0.
Table 4's parameter counts (1.7 M, 10.2 M at 10 classes) are the convolution and classifier weights: with the BN
parameters ResNet-1001 has 10.33 M (ResNet-164 1.70 M either way). Errors: Table 3 (median of 5 runs); Table 4 adds
4.62 % on CIFAR-10 for ResNet-1001 trained with mini-batch 64, not used here. Every convolution is padded or 1x1, so
the networks run at any input size; `min_resolution` is the catalogue's floor, 32.
Readings of our own: `drop_path_rate` adds timm's `DropPath` on the residual branches (stochastic depth, not in the
paper), rising linearly from 0 at the first unit as in timm's ResNet; the feature pyramid takes the three stage
outputs (strides 1, 2, 4), as timm's ResNetV2 does. Input statistics are CIFAR-10's (both papers' code normalises
with fb.resnet.torch's per-channel CIFAR-10 mean and std). The papers report CIFAR test errors only, not ImageNet
accuracy, so the entries' `top1` is None and the notes give the CIFAR-10 / CIFAR-100 errors.

`CifarResNet` is the network both this paper and Wide ResNet (`wide_resnet.py`) study depth and width with; each
family passes its own residual unit.
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.layers import DropPath, SelectAdaptivePool2d, calculate_drop_path_rates
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, pretrained_cfg, register
from trainer.models.stages import PooledLinearHead, StagedModel

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def check_rate(model: str, name: str, value: float) -> None:
    """A dropout or drop-path rate outside [0, 1): a one-line ConfigError naming the model and the argument."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{model}: {name}={value} is outside [0, 1)")


class PreActBottleneck(nn.Module):
    """Fig. 4e: BN-ReLU-conv1x1 -> BN-ReLU-conv3x3 -> BN-ReLU-conv1x1, added to the shortcut with nothing after."""

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
        mid_chs = out_chs // 4
        self.norm1 = norm_layer(in_chs)
        self.act1 = act_layer(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, stride=stride, bias=False)  # the authors' code: stride here
        self.norm2 = norm_layer(mid_chs)
        self.act2 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(mid_chs, mid_chs, 3, padding=1, bias=False)
        self.norm3 = norm_layer(mid_chs)
        self.act3 = act_layer(inplace=True)
        self.conv3 = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        reshapes = stride != 1 or in_chs != out_chs
        self.downsample = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False) if reshapes else None
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_preact = self.act1(self.norm1(x))
        # the projection sees the pre-activated input; an identity shortcut the raw one (Sec. 4.1, the code)
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        x = self.conv1(x_preact)
        x = self.conv2(self.act2(self.norm2(x)))
        x = self.conv3(self.act3(self.norm3(x)))
        return self.drop_path(x) + shortcut


class CifarResNet(PooledLinearHead, StagedModel, nn.Module):
    """3x3 stem (16 channels), three stages of `blocks_per_stage` units at strides 1, 2, 4, final BN-ReLU, global
    average pool, classifier. `block_fn(in_chs, out_chs, stride, drop_path_rate, act_layer=, norm_layer=)` builds
    one pre-activation unit; the first unit of a stage changes width (and, after the first stage, halves the size)."""

    def __init__(
        self,
        block_fn: Callable[..., nn.Module],
        blocks_per_stage: int,
        widths: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        stem_chs: int = 16,
        drop_path_rate: float = 0.0,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.grad_checkpointing = False
        self.stem = nn.Conv2d(in_chans, stem_chs, 3, padding=1, bias=False)  # no BN-ReLU: the first unit has it
        rates = calculate_drop_path_rates(drop_path_rate, len(widths) * blocks_per_stage)
        in_chs, stages, self.feature_info = stem_chs, [], []
        for stage_idx, out_chs in enumerate(widths):
            blocks = []
            for block_idx in range(blocks_per_stage):
                stride = 2 if stage_idx > 0 and block_idx == 0 else 1
                rate = rates[stage_idx * blocks_per_stage + block_idx]
                blocks.append(block_fn(in_chs, out_chs, stride, rate, act_layer=act_layer, norm_layer=norm_layer))
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=2**stage_idx, module=f"stages.{stage_idx}"))
        self.stages = nn.Sequential(*stages)
        self.norm = norm_layer(in_chs)  # the final BN-ReLU: pre-activation units leave their sum unnormalised
        self.act = act_layer(inplace=True)
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # the authors' code (fb.resnet.torch's MSR init): N(0, 2 / (k * k * out_channels)); BN 1 / 0; FC bias 0
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def trunk(self) -> list[nn.Module]:
        return [self.stem, *self.stages]

    def feature_ends(self) -> list[int]:
        return [1, 2, 3]  # the three stages' outputs

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self.run_stages(x)
        return self.act(self.norm(self.stages(self.stem(x))))


class PreActResNetCifar(CifarResNet):
    """ResNet-`depth` for CIFAR: depth = 9n + 2, n bottleneck units per stage, outputs 64, 128, 256."""

    def __init__(
        self,
        depth: int = 164,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        global_pool: str = "avg",
    ) -> None:
        if depth < 11 or (depth - 2) % 9:
            raise ConfigError(f"preact_resnet_cifar: depth={depth} is not 9n+2 with n >= 1 (the paper: 164, 1001)")
        check_rate("preact_resnet_cifar", "drop_path_rate", drop_path_rate)
        super().__init__(
            PreActBottleneck,
            blocks_per_stage=(depth - 2) // 9,
            widths=(64, 128, 256),
            num_classes=num_classes,
            in_chans=in_chans,
            drop_path_rate=drop_path_rate,
            act_layer=act_layer,
            norm_layer=norm_layer,
            global_pool=global_pool,
        )
        self.depth = depth


def _create_preact_resnet_cifar(variant: str, pretrained: bool = False, **kwargs: Any) -> PreActResNetCifar:
    return build_model_with_cfg(
        PreActResNetCifar,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2)),
        **kwargs,
    )


PAPER = Paper("Identity Mappings in Deep Residual Networks", "He, Zhang, Ren, Sun", 2016, "1603.05027")


def cifar_cfg(paper_ids: str, paper_name: str = PAPER.title) -> dict[str, Any]:
    """timm's pretrained_cfg for a CIFAR network: 32 px, no crop, CIFAR-10 statistics, 8x8 maps into the pool;
    `paper_ids` / `paper_name` name the network's paper."""
    return pretrained_cfg(
        input_size=(3, 32, 32),
        pool_size=(8, 8),
        crop_pct=1.0,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        first_conv="stem",
        classifier="fc",
        paper_ids=paper_ids,
        paper_name=paper_name,
    )


default_cfgs = generate_default_cfgs(
    {name: cifar_cfg("arXiv:1603.05027") for name in ("preact_resnet164_cifar", "preact_resnet1001_cifar")}
)


@register_model
def preact_resnet164_cifar(pretrained: bool = False, **kwargs: Any) -> PreActResNetCifar:
    """Pre-activation ResNet-164 for CIFAR (He et al. 2016b): 18 bottleneck units per stage."""
    return _create_preact_resnet_cifar("preact_resnet164_cifar", pretrained, **{"depth": 164, **kwargs})


@register_model
def preact_resnet1001_cifar(pretrained: bool = False, **kwargs: Any) -> PreActResNetCifar:
    """Pre-activation ResNet-1001 for CIFAR (He et al. 2016b): 111 bottleneck units per stage."""
    return _create_preact_resnet_cifar("preact_resnet1001_cifar", pretrained, **{"depth": 1001, **kwargs})


for _name, _builder, _params in (
    ("preact_resnet50", "resnetv2_50", 25_549_352),
    ("preact_resnet101", "resnetv2_101", 44_541_480),
):
    register(
        ModelEntry(
            name=_name,
            builder=_builder,
            family="preact_resnet",
            paper=PAPER,
            params=_params,
            recipe="preact_resnet",
            notes=f"timm's {_builder}: full pre-activation bottlenecks, stride on the 3x3",
        )
    )

# CIFAR-10 / CIFAR-100 test error (%), Table 3 (median of 5 runs; Table 4 repeats them with the parameter counts)
CIFAR_ERROR = {"preact_resnet164_cifar": (5.46, 24.33), "preact_resnet1001_cifar": (4.92, 22.71)}
CIFAR_PARAMS = {"preact_resnet164_cifar": 1_703_258, "preact_resnet1001_cifar": 10_327_706}  # at 10 classes

for _name, _params in (("preact_resnet164_cifar", 1_957_688), ("preact_resnet1001_cifar", 10_582_136)):
    _c10, _c100 = CIFAR_ERROR[_name]
    register(
        ModelEntry(
            name=_name,
            builder=_name,
            family="preact_resnet",
            paper=PAPER,
            params=_params,
            recipe="preact_resnet_cifar",
            resolution=32,
            crop_ratio=1.0,  # CIFAR images are used whole (4-px pad + random 32-px crop in training only)
            protocol="no ImageNet result: CIFAR test error in notes",
            source="own",
            cifar_error={"C10+": _c10, "C100+": _c100},
            cifar_params=CIFAR_PARAMS[_name],
            notes=(
                f"CIFAR network (params at 1000 classes); CIFAR-10 / CIFAR-100 test error {_c10} / {_c100} % "
                f"(Table 3); runs at any input size, catalogue floor 32"
            ),
        )
    )
