"""DenseNet for CIFAR, Huang, Liu, van der Maaten & Weinberger, "Densely Connected Convolutional Networks", CVPR 2017
(arXiv:1608.06993), Sec. 3 ("Implementation Details") and Sec. 4.

timm's DenseNets are the ImageNet ones (7x7/2 stem, four blocks); the CIFAR networks, which timm lacks:
- a 3x3 convolution to 16 channels (DenseNet) or 2k (DenseNet-BC), three dense blocks of equal length on maps of 32,
  16 and 8 px, a transition between two blocks (BN-ReLU-conv1x1-avgpool 2x2), a final BN-ReLU, global average
  pooling and the classifier;
- a layer is BN-ReLU-conv3x3 to k channels (k is the paper's growth rate), or, in DenseNet-BC, BN-ReLU-conv1x1 to 4k
  channels first (the bottleneck, "B"); DenseNet-BC's transitions halve the channels (compression theta = 0.5, "C");
- depth L counts the convolutions and the classifier: (L - 4) / 3 layers per block, (L - 4) / 6 bottleneck layers
  per block for BC (the first convolution, two transitions and the classifier make the 4);
- `drop_rate` is the dropout after every convolution but the first (Sec. 4.2: 0.2, for the runs without data
  augmentation only).
Parameter counts (Table 2, 10 classes): DenseNet (L=40, k=12) 1.0 M, DenseNet-BC (L=100, k=12) 0.8 M, (L=250,
k=24) 15.3 M, (L=190, k=40) 25.6 M.
Readings of our own: convolutions without bias, He initialisation (the authors' Torch code), classifier bias 0;
the feature pyramid takes the three block outputs (strides 1, 2, 4; the last one after the final BN-ReLU), the
transition's pooling belonging to the next stage; input statistics are CIFAR-10's.
"""

from typing import Any

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, register
from trainer.models.preact_resnet import check_rate, cifar_cfg
from trainer.models.stages import PooledLinearHead, StagedModel


def _conv_unit(in_chs: int, out_chs: int, kernel: int, drop_rate: float) -> list[nn.Module]:
    """BN-ReLU-conv (the paper's composite function H), then dropout where there is any."""
    unit: list[nn.Module] = [
        nn.BatchNorm2d(in_chs),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_chs, out_chs, kernel, padding=kernel // 2, bias=False),
    ]
    return unit + ([nn.Dropout(drop_rate)] if drop_rate > 0 else [])


class DenseLayer(nn.Module):
    """One layer of a dense block: its k new channels, concatenated to its input."""

    def __init__(self, in_chs: int, growth_rate: int, bottleneck: bool, drop_rate: float) -> None:
        super().__init__()
        units: list[nn.Module] = []
        if bottleneck:  # Sec. 3, "Bottleneck layers": 1x1 to 4k channels
            units += _conv_unit(in_chs, 4 * growth_rate, 1, drop_rate)
            in_chs = 4 * growth_rate
        units += _conv_unit(in_chs, growth_rate, 3, drop_rate)
        self.layers = nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.layers(x)], 1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1 then 2x2 average pooling between two blocks."""

    def __init__(self, in_chs: int, out_chs: int, drop_rate: float) -> None:
        super().__init__(*_conv_unit(in_chs, out_chs, 1, drop_rate), nn.AvgPool2d(2))


class DenseNetCifar(PooledLinearHead, StagedModel, nn.Module):
    """DenseNet(-BC) for CIFAR of depth `depth` and growth rate `growth_rate` (k)."""

    def __init__(
        self,
        depth: int = 40,
        growth_rate: int = 12,
        bottleneck: bool = False,
        compression: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        per_block = (depth - 4) // (6 if bottleneck else 3)
        if per_block < 1 or (depth - 4) % (6 if bottleneck else 3):
            form = "6n+4 (DenseNet-BC)" if bottleneck else "3n+4"
            raise ConfigError(f"densenet_cifar: depth={depth} is not {form} with n >= 1")
        if not 0.0 < compression <= 1.0:
            raise ConfigError(f"densenet_cifar: compression={compression} is outside (0, 1]")
        check_rate("densenet_cifar", "drop_rate", drop_rate)
        self.num_classes, self.drop_rate = num_classes, drop_rate
        chs = 2 * growth_rate if bottleneck else 16  # Sec. 3: the first convolution's width
        self.stem = nn.Conv2d(in_chans, chs, 3, padding=1, bias=False)
        stages, self.feature_info = [], []
        for block_idx in range(3):
            layers: list[nn.Module] = []
            if block_idx > 0:
                out_chs = int(compression * chs)  # floor(theta m), Sec. 3 "Compression"
                layers.append(Transition(chs, out_chs, drop_rate))
                chs = out_chs
            for _ in range(per_block):
                layers.append(DenseLayer(chs, growth_rate, bottleneck, drop_rate))
                chs += growth_rate
            stages.append(nn.Sequential(*layers))
            self.feature_info.append(dict(num_chs=chs, reduction=2**block_idx, module=f"stages.{block_idx}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(chs)
        self.act = nn.ReLU(inplace=True)
        self.num_features = self.head_hidden_size = chs
        self.grad_checkpointing = False
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.fc = nn.Linear(chs, num_classes) if num_classes > 0 else nn.Identity()
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

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self.run_stages(x)
        return self.act(self.norm(self.stages(self.stem(x))))


def _create_densenet_cifar(variant: str, pretrained: bool = False, **kwargs: Any) -> DenseNetCifar:
    return build_model_with_cfg(
        DenseNetCifar, variant, pretrained, feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2)), **kwargs
    )


# name: (depth L, growth rate k, BC)
VARIANTS = {
    "densenet40_k12_cifar": (40, 12, False),
    "densenet_bc100_k12_cifar": (100, 12, True),
    "densenet_bc250_k24_cifar": (250, 24, True),
    "densenet_bc190_k40_cifar": (190, 40, True),
}
PAPER = Paper("Densely Connected Convolutional Networks", "Huang, Liu, van der Maaten, Weinberger", 2017, "1608.06993")
default_cfgs = generate_default_cfgs({name: cifar_cfg("arXiv:1608.06993", PAPER.title) for name in VARIANTS})


def _variant(name: str, pretrained: bool, kwargs: dict[str, Any]) -> DenseNetCifar:
    depth, k, bc = VARIANTS[name]
    args = {"depth": depth, "growth_rate": k, "bottleneck": bc, "compression": 0.5 if bc else 1.0, **kwargs}
    return _create_densenet_cifar(name, pretrained, **args)


@register_model
def densenet40_k12_cifar(pretrained: bool = False, **kwargs: Any) -> DenseNetCifar:
    """DenseNet (L=40, k=12) for CIFAR (Huang et al. 2017, Table 2): 12 layers per block."""
    return _variant("densenet40_k12_cifar", pretrained, kwargs)


@register_model
def densenet_bc100_k12_cifar(pretrained: bool = False, **kwargs: Any) -> DenseNetCifar:
    """DenseNet-BC (L=100, k=12) for CIFAR (Huang et al. 2017, Table 2): 16 bottleneck layers per block."""
    return _variant("densenet_bc100_k12_cifar", pretrained, kwargs)


@register_model
def densenet_bc250_k24_cifar(pretrained: bool = False, **kwargs: Any) -> DenseNetCifar:
    """DenseNet-BC (L=250, k=24) for CIFAR (Huang et al. 2017, Table 2): 41 bottleneck layers per block."""
    return _variant("densenet_bc250_k24_cifar", pretrained, kwargs)


@register_model
def densenet_bc190_k40_cifar(pretrained: bool = False, **kwargs: Any) -> DenseNetCifar:
    """DenseNet-BC (L=190, k=40) for CIFAR (Huang et al. 2017, Table 2): 31 bottleneck layers per block."""
    return _variant("densenet_bc190_k40_cifar", pretrained, kwargs)


# Table 2: test error (%); C10 / C100 without augmentation (with dropout 0.2), "+" with it. L=190 has no C10/C100.
CIFAR_ERROR = {
    "densenet40_k12_cifar": {"C10": 7.00, "C10+": 5.24, "C100": 27.55, "C100+": 24.42},
    "densenet_bc100_k12_cifar": {"C10": 5.92, "C10+": 4.51, "C100": 24.15, "C100+": 22.27},
    "densenet_bc250_k24_cifar": {"C10": 5.19, "C10+": 3.62, "C100": 19.64, "C100+": 17.60},
    "densenet_bc190_k40_cifar": {"C10+": 3.46, "C100+": 17.18},
}
PARAMS = {  # at 1000 classes
    "densenet40_k12_cifar": 1_464_232,
    "densenet_bc100_k12_cifar": 1_108_732,
    "densenet_bc250_k24_cifar": 17_042_056,
    "densenet_bc190_k40_cifar": 27_793_520,
}
CIFAR_PARAMS = {  # at 10 classes (Table 2's 1.0 M, 0.8 M, 15.3 M, 25.6 M)
    "densenet40_k12_cifar": 1_019_722,
    "densenet_bc100_k12_cifar": 769_162,
    "densenet_bc250_k24_cifar": 15_324_406,
    "densenet_bc190_k40_cifar": 25_624_430,
}

for _name, (_depth, _k, _bc) in VARIANTS.items():
    register(
        ModelEntry(
            name=_name,
            builder=_name,
            family="densenet_cifar",
            paper=PAPER,
            params=PARAMS[_name],
            recipe="densenet_cifar",
            resolution=32,
            crop_ratio=1.0,
            protocol="no ImageNet result: CIFAR test error in cifar_error",
            source="own",
            cifar_error=CIFAR_ERROR[_name],
            cifar_params=CIFAR_PARAMS[_name],
            notes=f"CIFAR DenseNet{'-BC' if _bc else ''} L={_depth}, k={_k} (params at 1000 classes); Table 2",
        )
    )
