"""SqueezeNet, Iandola, Han, Moskewicz, Ashraf, Dally & Keutzer, "SqueezeNet: AlexNet-level accuracy with 50x fewer
parameters and <0.5MB model size", 2016 (arXiv:1602.07360).

- Fire module (Sec. 3.2, Fig. 1): a 1x1 "squeeze" convolution, then 1x1 and 3x3 "expand" convolutions (padding 1)
  whose outputs are concatenated; a ReLU after each of the three convolutions (Sec. 3.3.1).
- SqueezeNet 1.0 (Table 1): conv1 96 7x7/2 (unpadded), fire2..fire9 with squeeze/expand widths 16/64 (fire2-3),
  32/128 (fire4-5), 48/192 (fire6-7), 64/256 (fire8-9), 3x3/2 max-pools after conv1, fire4 and fire8; dropout 0.5
  after fire9, conv10 1x1 to the classes + ReLU, global average pooling: no fully connected layer.
- SqueezeNet 1.1 (the authors' repo, SqueezeNet_v1.1/README): conv1 64 3x3/2 and the pools after conv1, fire3 and
  fire5; the same fire modules. The repo reports 1.0's accuracy at 2.4x less computation and gives no number.
- Bypass connections (Sec. 6, Fig. 2): "simple" adds a Fire module's input to its output where the channels agree
  (fire3, 5, 7, 9); "complex" also bypasses the others (fire2, 4, 6, 8) through a 1x1 convolution. The sum is not
  passed through another ReLU ("the input to Fire4 is equal to (output of Fire2 + output of Fire3)").

Readings where the paper is ambiguous:
- Resolution 224, not the paper's 227 crops: torchvision's weights and the reference counts are at 224, and the
  network is fully convolutional. At 224 conv1 gives 109x109 (227: 111x111) and fire9 13x13 either way.
- Max-pools round up (Caffe's pooling, torchvision's ceil_mode=True), so 109 -> 54 -> 27 -> 13.
- The authors' v1.0 prototxt pads conv10 (a 1x1 convolution) by 1, so a border of bias-only outputs enters the
  average; torchvision does not, and neither does this network (v1.1's prototxt has no padding there either).
- The complex bypass's 1x1 convolution has a bias (Caffe's default) and no ReLU. It adds 341,248 parameters; Table 3
  lists 7.7 MB against 4.8 MB (about 0.75 M more 32-bit values), which no 1x1 bypass on fire2/4/6/8 reproduces.
- Init as in the authors' prototxt: Xavier (Caffe's: uniform, variance 1 / fan_in) for every convolution, N(0, 0.01)
  for conv10, zero biases. torchvision uses Kaiming-uniform; trained weights load either way.
- The classifier is conv10. `forward_head(x, pre_logits=True)` returns fire9's globally pooled (and, in training,
  dropped-out) features, the 512 values per image that conv10 reads: conv10 followed by ReLU and pooling is not a
  function of the pooled features, so `classifier(pre_logits)` is not the logits. `num_classes=0` leaves out conv10
  and its ReLU, and the model returns the same pooled features.

Module names follow torchvision's (`features.<i>` with Fire modules' `squeeze`, `expand1x1`, `expand3x3`), so its
state_dicts load with only conv10 renamed (`classifier.1` -> `classifier`; `checkpoint_filter_fn`).
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, pretrained_cfg, register
from trainer.models.stages import StagedModel

BYPASSES = ("", "simple", "complex")


class Fire(nn.Module):
    """Squeeze 1x1 -> ReLU -> [expand 1x1 -> ReLU, expand 3x3 -> ReLU] concatenated (Fig. 1), with an optional
    bypass (Sec. 6): `identity` (simple) or `conv` (complex, a 1x1 convolution where the channels differ)."""

    def __init__(
        self,
        in_chs: int,
        squeeze_chs: int,
        expand1x1_chs: int,
        expand3x3_chs: int,
        bypass: str = "",
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_chs, squeeze_chs, kernel_size=1)
        self.squeeze_activation = act_layer(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_chs, expand1x1_chs, kernel_size=1)
        self.expand1x1_activation = act_layer(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_chs, expand3x3_chs, kernel_size=3, padding=1)
        self.expand3x3_activation = act_layer(inplace=True)
        out_chs = expand1x1_chs + expand3x3_chs
        if bypass == "identity":
            assert in_chs == out_chs, "an identity bypass needs equal input and output channels"
            self.bypass: nn.Module | None = nn.Identity()
        elif bypass == "conv":
            self.bypass = nn.Conv2d(in_chs, out_chs, kernel_size=1)
        else:
            self.bypass = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze_activation(self.squeeze(x))
        out = torch.cat([self.expand1x1_activation(self.expand1x1(s)), self.expand3x3_activation(self.expand3x3(s))], 1)
        return out if self.bypass is None else out + self.bypass(x)


@dataclass(frozen=True)
class SqueezeNetCfg:
    stem_chs: int
    stem_kernel: int
    fires: tuple[tuple[int, int, int], ...]  # (squeeze, expand 1x1, expand 3x3) for fire2, fire3, ...
    pool_after: tuple[int, ...]  # fire modules followed by a 3x3/2 max-pool (conv1 always is)


_FIRES = ((16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128), (48, 192, 192), (48, 192, 192))
_FIRES += ((64, 256, 256), (64, 256, 256))
CFGS = {
    "1_0": SqueezeNetCfg(stem_chs=96, stem_kernel=7, fires=_FIRES, pool_after=(4, 8)),  # Table 1
    "1_1": SqueezeNetCfg(stem_chs=64, stem_kernel=3, fires=_FIRES, pool_after=(3, 5)),  # the authors' v1.1
}


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)  # Caffe rounds pooled sizes up


class SqueezeNet(StagedModel, nn.Module):
    def __init__(
        self,
        version: str = "1_0",
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.5,
        bypass: str = "",
        global_pool: str = "avg",
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if version not in CFGS:
            raise ConfigError(f"squeezenet: version={version!r} is not one of {', '.join(CFGS)}")
        if bypass not in BYPASSES:
            raise ConfigError(f"squeezenet: bypass={bypass!r} is not one of '', 'simple', 'complex'")
        if not 0.0 <= drop_rate < 1.0:
            raise ConfigError(f"squeezenet: drop_rate={drop_rate} is outside [0, 1)")
        cfg = CFGS[version]
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.act_layer = act_layer
        self.grad_checkpointing = False

        layers: list[nn.Module] = [
            nn.Conv2d(in_chans, cfg.stem_chs, kernel_size=cfg.stem_kernel, stride=2),  # unpadded, as in Caffe
            act_layer(inplace=True),
        ]
        self.feature_info = [dict(num_chs=cfg.stem_chs, reduction=2, module="features.1")]
        layers.append(_pool())
        in_chs, reduction = cfg.stem_chs, 4
        for number, (squeeze, e1, e3) in enumerate(cfg.fires, start=2):
            out_chs = e1 + e3
            kind = "identity" if in_chs == out_chs else "conv"  # Sec. 6: identity where the channels agree
            use = bypass == "complex" or (bypass == "simple" and kind == "identity")
            layers.append(Fire(in_chs, squeeze, e1, e3, bypass=kind if use else "", act_layer=act_layer))
            in_chs = out_chs
            if number in cfg.pool_after:
                self.feature_info.append(
                    dict(num_chs=out_chs, reduction=reduction, module=f"features.{len(layers) - 1}")
                )
                layers.append(_pool())
                reduction *= 2
        self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f"features.{len(layers) - 1}"))
        self.features = nn.Sequential(*layers)
        self.num_features = self.head_hidden_size = in_chs

        self.head_drop = nn.Dropout(drop_rate)  # Sec. 3.3.1: dropout 0.5 after fire9
        self.classifier, self.head_act = self._conv10(num_classes)
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self._init_weights()

    def _conv10(self, num_classes: int) -> tuple[nn.Module, nn.Module]:
        if num_classes <= 0:
            return nn.Identity(), nn.Identity()
        conv10 = nn.Conv2d(self.num_features, num_classes, kernel_size=1)
        nn.init.normal_(conv10.weight, std=0.01)  # the prototxt's Gaussian filler for conv10
        nn.init.zeros_(conv10.bias)
        return conv10, self.act_layer(inplace=True)

    def _init_weights(self) -> None:
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1.0)  # Caffe's Xavier: U(+-sqrt(3 / fan_in))
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.classifier, self.head_act = self._conv10(num_classes)

    def trunk(self) -> list[nn.Module]:
        return list(self.features)

    def feature_ends(self) -> list[int]:
        return [int(info["module"].split(".")[1]) for info in self.feature_info]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self.run_stages(x)
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x)
        if pre_logits:
            return self.global_pool(x)
        return self.global_pool(self.head_act(self.classifier(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """torchvision's SqueezeNet -> ours: its conv10 is `classifier.1` (after the dropout), ours `classifier`."""
    return {k.replace("classifier.1.", "classifier.", 1): v for k, v in state_dict.items()}


def _create_squeezenet(variant: str, pretrained: bool = False, **kwargs: Any) -> SqueezeNet:
    return build_model_with_cfg(
        SqueezeNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


PAPER = Paper(
    "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size",
    "Iandola, Han, Moskewicz, Ashraf, Dally, Keutzer",
    2016,
    "1602.07360",
)


def _cfg() -> dict[str, Any]:
    return pretrained_cfg(
        pool_size=(13, 13),
        first_conv="features.0",
        classifier="classifier",
        paper_ids="arXiv:1602.07360",
        paper_name=PAPER.title,
    )


default_cfgs = generate_default_cfgs(
    {
        "squeezenet1_0": _cfg(),
        "squeezenet1_1": _cfg(),
        "squeezenet1_0_simple_bypass": _cfg(),
        "squeezenet1_0_complex_bypass": _cfg(),
    }
)


@register_model
def squeezenet1_0(pretrained: bool = False, **kwargs: Any) -> SqueezeNet:
    """SqueezeNet 1.0 (Table 1 of the paper)."""
    return _create_squeezenet("squeezenet1_0", pretrained, **dict(dict(version="1_0"), **kwargs))


@register_model
def squeezenet1_1(pretrained: bool = False, **kwargs: Any) -> SqueezeNet:
    """SqueezeNet 1.1 (the authors' repo): 3x3 conv1 of 64, earlier pools; 2.4x less computation than 1.0."""
    return _create_squeezenet("squeezenet1_1", pretrained, **dict(dict(version="1_1"), **kwargs))


@register_model
def squeezenet1_0_simple_bypass(pretrained: bool = False, **kwargs: Any) -> SqueezeNet:
    """SqueezeNet 1.0 with identity bypasses around fire3, 5, 7, 9 (Sec. 6)."""
    model_args = dict(version="1_0", bypass="simple")
    return _create_squeezenet("squeezenet1_0_simple_bypass", pretrained, **dict(model_args, **kwargs))


@register_model
def squeezenet1_0_complex_bypass(pretrained: bool = False, **kwargs: Any) -> SqueezeNet:
    """SqueezeNet 1.0 with identity bypasses and 1x1-convolution bypasses around fire2, 4, 6, 8 (Sec. 6)."""
    model_args = dict(version="1_0", bypass="complex")
    return _create_squeezenet("squeezenet1_0_complex_bypass", pretrained, **dict(model_args, **kwargs))


# name -> (params at 1000 classes, min_resolution, paper top-1, top-5, protocol, notes). min_resolution: 1.0's
# unpadded 7x7/2 conv1 and three 3x3/2 pools need 21 px (21 -> 8 -> 4 -> 2 -> 1); 1.1's 3x3/2 conv1 17 px.
ENTRIES = {
    "squeezenet1_0": (1_248_424, 21, 57.5, 80.3, "1-crop (Table 2)", "torchvision's network (same state_dict)"),
    "squeezenet1_1": (
        1_235_496,
        17,
        None,
        None,
        "not reported",
        "the authors' repo gives v1.1 no number (1.0's accuracy at 2.4x less computation); torchvision's network",
    ),
    "squeezenet1_0_simple_bypass": (1_248_424, 21, 60.4, 82.5, "1-crop (Table 3)", "identity bypass, no parameters"),
    "squeezenet1_0_complex_bypass": (
        1_589_672,
        21,
        58.8,
        82.0,
        "1-crop (Table 3)",
        "1x1-conv bypasses on fire2/4/6/8 add 341,248 parameters; the paper's 7.7 MB implies about 0.75 M",
    ),
}

for _name, (_params, _min_res, _top1, _top5, _protocol, _notes) in ENTRIES.items():
    register(
        ModelEntry(
            name=_name,
            builder=_name,
            family="squeezenet",
            paper=PAPER,
            params=_params,
            recipe="squeezenet",
            min_resolution=_min_res,
            top1=_top1,
            top5=_top5,
            protocol=_protocol,
            source="own",
            notes=_notes,
        )
    )
