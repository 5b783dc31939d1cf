"""GoogLeNet (Inception v1), Szegedy, Liu, Jia, Sermanet, Reed, Anguelov, Erhan, Vanhoucke & Rabinovich, "Going Deeper
with Convolutions", CVPR 2015 (arXiv:1409.4842); and torchvision's batch-normalised GoogLeNet.

`googlenet` is the paper's network (Table 1, Fig. 3, Sec. 5):
- no batch normalisation: every convolution has a bias and a ReLU;
- the stem of Fig. 3: conv 7x7/2 (64), max-pool 3x3/2, LRN, conv 1x1 (64), conv 3x3 (192), LRN, max-pool 3x3/2;
- the nine inception modules 3a..5b with Table 1's channels (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool
  proj), a 3x3/1 max-pool in the pool branch, max-pools 3x3/2 after 3b and 4e;
- average pooling over the final 7x7 map, dropout 0.4, a linear classifier;
- two auxiliary classifiers on 4a and 4d (Sec. 5): average pool 5x5/3 (4x4 at 224), 1x1 conv 128 + ReLU, FC 1024 +
  ReLU, dropout 0.7, linear. On by default (the paper trains with them; Sec. 5 weights their losses by 0.3, which is
  the recipe's business). In training mode the model returns (main, aux1, aux2), in eval mode the main logits;
  `aux_logits=False` removes the heads.

Readings where the paper is ambiguous:
- LRN: the paper gives no parameters. We take those of the Caffe reference model (bvlc_googlenet): local_size 5,
  alpha 1e-4, beta 0.75, k 1, with Caffe's convention of dividing alpha by n (torch.nn.LocalResponseNorm's too).
  `trainer.models.layers.LocalResponseNorm` takes AlexNet's undivided alpha, so it gets alpha = 1e-4 / 5.
- Pooling: the stride-2 max-pools round up (Caffe's, and torchvision's, ceil mode); that gives Table 1's 112, 56, 28,
  14, 7 at 224 without padding.
- The 7x7 average pool is a global average pool: the same at 224, and the network then runs at other sizes too.
- Auxiliary heads: after the paper's 5x5/3 average pool an adaptive average pool to 4x4 (the identity at 224, where
  the 14x14 map pools to 4x4) keeps FC 1024's input at 128x4x4 for other input sizes. The 5x5 pool needs a 5x5 map
  on stage 4, so training with the heads needs inputs of at least 79 px (eval runs smaller).
- Table 1's first row (2.7K parameters, 34M multiply-adds) is not a plain 7x7x3x64 convolution (9,408 weights, 118M
  MACs): it is exactly a depthwise 7x7 with depth multiplier 8 followed by a 1x1 to 64 (1,176 + 1,536 = 2,712
  weights), the separable first layer the BN-Inception paper's appendix says Google's model used. The GoogLeNet paper
  describes a plain convolution (Fig. 3, as the Caffe reference model), and that is what this network has.
- Initialisation: the paper gives none; we take the Caffe reference model's ("xavier": uniform +-sqrt(3 / fan_in),
  biases 0.2, classifier biases 0), since without batch norm the scale of the initial weights matters.

`googlenet_bn` is torchvision's `GoogLeNet` (which its weights, ported from TensorFlow, use), built by the same class:
conv without bias + BatchNorm(eps=0.001) + ReLU, no LRN, ceil-mode max-pools with a 2x2/2 pool after 4e, dropout
0.2, aux heads with a plain adaptive 4x4 average pool. Its "5x5" branch uses a 3x3 convolution: a known quirk of
torchvision's network (pytorch/vision#906), kept because it is torchvision's network and its weights fit only it.
The module names are torchvision's, so its state_dict loads as is; the default build has no auxiliary heads (as
torchvision's pretrained model, 6.62 M parameters); `aux_logits=True` adds them (torchvision's aux weights load too).
torchvision's ported weights expect `transform_input=True`, i.e. inputs normalised with mean = std = 0.5.
"""

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model

from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, pretrained_cfg, register
from trainer.models.layers import LocalResponseNorm
from trainer.models.stages import StagedModel

# Table 1: module -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj)
INCEPTION_CHANNELS: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def _caffe_lrn() -> LocalResponseNorm:
    # bvlc_googlenet: local_size 5, alpha 1e-4, beta 0.75, k 1, alpha divided by n (Caffe's convention)
    return LocalResponseNorm(n=5, alpha=1e-4 / 5, beta=0.75, k=1.0)


class ConvBlock(nn.Module):
    """Convolution + ReLU (the paper's, with bias), or convolution without bias + norm + ReLU (torchvision's
    BasicConv2d) when `norm_layer` is given. Submodules are named as torchvision's (`conv`, `bn`)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        norm_layer: Callable[[int], nn.Module] | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, bias=norm_layer is None)
        self.bn = norm_layer(out_chs) if norm_layer is not None else nn.Identity()
        self.act = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Fig. 2(b): 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3/1 max-pool -> 1x1, concatenated (torchvision's names)."""

    def __init__(
        self,
        in_chs: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        conv_block: Callable[..., nn.Module] = ConvBlock,
        branch3_kernel: int = 5,
    ) -> None:
        super().__init__()
        self.branch1 = conv_block(in_chs, ch1x1, 1)
        self.branch2 = nn.Sequential(conv_block(in_chs, ch3x3red, 1), conv_block(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(
            conv_block(in_chs, ch5x5red, 1),
            conv_block(ch5x5red, ch5x5, branch3_kernel, padding=branch3_kernel // 2),
        )
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_block(in_chs, pool_proj, 1))
        self.out_chs = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Sec. 5's auxiliary classifier: [5x5/3 average pool], 4x4 adaptive average pool, 1x1 conv 128 + ReLU,
    FC 1024 + ReLU, dropout, FC num_classes (torchvision's names)."""

    def __init__(
        self,
        in_chs: int,
        num_classes: int,
        conv_block: Callable[..., nn.Module] = ConvBlock,
        drop_rate: float = 0.7,
        paper_pool: bool = True,
    ) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, stride=3) if paper_pool else nn.Identity()  # 14x14 -> 4x4 at 224
        self.adaptive_pool = nn.AdaptiveAvgPool2d(4)  # identity at 224; keeps FC 1024's input at 128x4x4
        self.conv = conv_block(in_chs, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(1024, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.adaptive_pool(self.pool(x)))
        return self.fc2(self.dropout(self.act(self.fc1(torch.flatten(x, 1)))))


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"googlenet: {name}={value} is outside [0, 1)")


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"googlenet: {name}={value} is not one of {', '.join(map(str, choices))}")


class GoogLeNet(StagedModel, nn.Module):
    """GoogLeNet. The defaults build the paper's network; `_VARIANTS["googlenet_bn"]` gives torchvision's."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        drop_rate: float = 0.4,
        aux_drop_rate: float = 0.7,
        norm_layer: Callable[[int], nn.Module] | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
        lrn: bool = True,
        branch3_kernel: int = 5,
        pool4_kernel: int = 3,
        aux_paper_pool: bool = True,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        _check_rate("drop_rate", drop_rate)
        _check_rate("aux_drop_rate", aux_drop_rate)
        _check_choice("branch3_kernel", branch3_kernel, (3, 5))
        _check_choice("pool4_kernel", pool4_kernel, (2, 3))
        if num_classes < 0 or in_chans < 1:
            raise ConfigError(f"googlenet: num_classes={num_classes}, in_chans={in_chans} must be >= 0 and >= 1")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.aux_logits = aux_logits
        self.grad_checkpointing = False
        conv_block = partial(ConvBlock, norm_layer=norm_layer, act_layer=act_layer)
        inception = partial(Inception, conv_block=conv_block, branch3_kernel=branch3_kernel)

        # Fig. 3 stem; torchvision's names (norm1/norm2 are the paper's LRNs, identities without them)
        self.conv1 = conv_block(in_chans, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.norm1 = _caffe_lrn() if lrn else nn.Identity()
        self.conv2 = conv_block(64, 64, 1)
        self.conv3 = conv_block(64, 192, 3, padding=1)
        self.norm2 = _caffe_lrn() if lrn else nn.Identity()
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        chs = 192
        for stage in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
            block = inception(chs, *INCEPTION_CHANNELS[stage])
            setattr(self, f"inception{stage}", block)
            chs = block.out_chs
            if stage == "3b":
                self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            elif stage == "4e":
                self.maxpool4 = nn.MaxPool2d(pool4_kernel, stride=2, ceil_mode=True)
        self.num_features = self.head_hidden_size = chs  # 1024

        # after inception5b, so timm's feature extractor (which runs the children in order) stops before them
        aux = partial(InceptionAux, conv_block=conv_block, drop_rate=aux_drop_rate, paper_pool=aux_paper_pool)
        self.aux1: InceptionAux | None = aux(self.inception4a.out_chs, num_classes) if aux_logits else None
        self.aux2: InceptionAux | None = aux(self.inception4d.out_chs, num_classes) if aux_logits else None

        # Table 1's 7x7 average pool at 224
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(chs, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [
            dict(num_chs=64, reduction=2, module="conv1"),
            dict(num_chs=192, reduction=4, module="norm2"),
            dict(num_chs=self.inception3b.out_chs, reduction=8, module="inception3b"),
            dict(num_chs=self.inception4e.out_chs, reduction=16, module="inception4e"),
            dict(num_chs=chs, reduction=32, module="inception5b"),
        ]
        self._init_weights(caffe=norm_layer is None)

    def _init_weights(self, caffe: bool) -> None:
        classifiers = {self.fc, *(head.fc2 for head in (self.aux1, self.aux2) if head is not None)}
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if caffe:  # bvlc_googlenet: xavier (uniform, fan-in), biases 0.2, classifier biases 0
                    bound = math.sqrt(3.0 / m.weight[0].numel())
                    nn.init.uniform_(m.weight, -bound, bound)
                    nn.init.constant_(m.bias, 0.0 if m in classifiers else 0.2)
                else:  # torchvision's init_weights=True
                    nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New main and auxiliary classifiers for `num_classes`; `global_pool` as timm's ('' for none)."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for head in (self.aux1, self.aux2):
            if head is not None:
                head.fc2 = nn.Linear(1024, num_classes) if num_classes > 0 else nn.Identity()

    def trunk(self) -> list[nn.Module]:
        names = ["conv1", "maxpool1", "norm1", "conv2", "conv3", "norm2", "maxpool2", "inception3a", "inception3b"]
        names += ["maxpool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4"]
        return [getattr(self, name) for name in (*names, "inception5a", "inception5b")]

    @torch.jit.ignore
    def _features_checkpointed(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`_features` with every trunk module recomputed in the backward pass (timm's gradient checkpointing)."""
        aux: list[torch.Tensor] = []
        for module in self.trunk():
            x = checkpoint(module, x)
            for head, after in ((self.aux1, self.inception4a), (self.aux2, self.inception4d)):
                if with_aux and head is not None and module is after:
                    aux.append(head(x))
        return x, aux

    def _features(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._features_checkpointed(x, with_aux)
        aux: list[torch.Tensor] = []
        x = self.norm1(self.maxpool1(self.conv1(x)))
        x = self.maxpool2(self.norm2(self.conv3(self.conv2(x))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        if with_aux and self.aux1 is not None:
            aux.append(self.aux1(x))
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        if with_aux and self.aux2 is not None:
            aux.append(self.aux2(x))
        x = self.maxpool4(self.inception4e(x))
        return self.inception5b(self.inception5a(x)), aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x, with_aux=False)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training with aux heads: (main, aux1, aux2) (torchvision returns (main, aux2, aux1)); else the logits."""
        x, aux = self._features(x, with_aux=self.training and self.aux_logits)
        x = self.forward_head(x)
        if len(aux) == 2:  # a fixed-size tuple, so TorchScript can type it
            return x, aux[0], aux[1]
        return x


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: GoogLeNet) -> dict[str, torch.Tensor]:
    """torchvision's keys are ours; its checkpoints carry aux-head tensors, dropped where the model has no heads."""
    drop = tuple(f"{name}." for name in ("aux1", "aux2") if getattr(model, name, None) is None)
    return {k: v for k, v in state_dict.items() if not (drop and k.startswith(drop))}


# per-variant constructor defaults
_VARIANTS: dict[str, dict[str, Any]] = {
    "googlenet": {},
    "googlenet_bn": dict(
        norm_layer=partial(nn.BatchNorm2d, eps=0.001),
        lrn=False,
        branch3_kernel=3,  # torchvision's quirk (pytorch/vision#906)
        pool4_kernel=2,
        aux_paper_pool=False,
        aux_logits=False,  # as torchvision's pretrained model
        drop_rate=0.2,
    ),
}


def _create_googlenet(variant: str, pretrained: bool = False, **kwargs: Any) -> GoogLeNet:
    return build_model_with_cfg(
        GoogLeNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3, 4)),
        **{**_VARIANTS[variant], **kwargs},
    )


PAPER = Paper(
    "Going Deeper with Convolutions",
    "Szegedy, Liu, Jia, Sermanet, Reed, Anguelov, Erhan, Vanhoucke, Rabinovich",
    2015,
    "1409.4842",
)


default_cfgs = generate_default_cfgs(
    {
        name: pretrained_cfg(
            first_conv="conv1.conv",
            # timm's convention: every classifier, the auxiliary heads' too where the default build has them
            classifier=("fc", "aux1.fc2", "aux2.fc2") if _VARIANTS[name].get("aux_logits", True) else "fc",
            paper_ids="arXiv:1409.4842",
            paper_name=PAPER.title,
        )
        for name in _VARIANTS
    }
)


@register_model
def googlenet(pretrained: bool = False, **kwargs: Any) -> GoogLeNet:
    """GoogLeNet as in the paper: no BN, LRN in the stem, 5x5 branches, aux heads on (Szegedy et al. 2015)."""
    return _create_googlenet("googlenet", pretrained, **kwargs)


@register_model
def googlenet_bn(pretrained: bool = False, **kwargs: Any) -> GoogLeNet:
    """torchvision's batch-normalised GoogLeNet (3x3 in the "5x5" branch), no aux heads by default."""
    return _create_googlenet("googlenet_bn", pretrained, **kwargs)


register(
    ModelEntry(
        name="googlenet",
        builder="googlenet",
        family="googlenet",
        paper=PAPER,
        params=6_998_552,  # the paper's "about 6.8 M" network; the two heads add 6,379,728 (13.38 M in all)
        aux_params=6_379_728,
        recipe="googlenet",
        min_resolution=79,  # the aux heads' 5x5/3 pool needs a 5x5 map on stage 4 (eval alone runs smaller)
        top1=None,
        top5=89.93,
        protocol="1 model, 1 crop (Table 3: 10.07% top-5 error; no top-1 given)",
        source="own",
        notes=(
            "built with both auxiliary heads (aux params; aux_logits=False drops them); plain 7x7 conv1 with LRN as "
            "Fig. 3 (Table 1's 2.7K/34M conv1 row is a separable 7x7)"
        ),
    )
)

register(
    ModelEntry(
        name="googlenet_bn",
        builder="googlenet_bn",
        family="googlenet",
        paper=PAPER,
        params=6_624_904,
        recipe="googlenet",
        min_resolution=32,
        top1=None,
        top5=None,
        protocol="no paper reports this network",
        source="own",
        notes=(
            "torchvision's GoogLeNet (BN, 3x3 in the 5x5 branch); params without aux heads (default, as torchvision's "
            "pretrained model; aux_logits=True adds them); torchvision's ported weights: 69.78 / 89.53"
        ),
    )
)
