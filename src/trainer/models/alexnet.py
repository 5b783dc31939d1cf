"""AlexNet, as in Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional Neural
Networks", NeurIPS 2012.

The paper's network, not torchvision's single-tower variant (64-192-384-256-256):
- conv channels 96-256-384-384-256, first conv 11x11 stride 4 (Sec. 3.5, Fig. 2);
- local response normalisation (k=2, n=5, alpha=1e-4, beta=0.75) after the ReLUs of conv1 and conv2 (Sec. 3.3);
- overlapping max-pooling 3x3 stride 2 after the two LRNs and after conv5 (Sec. 3.4);
- the two-GPU towers as grouped convolutions: conv2, conv4 and conv5 see only their own tower's maps (groups=2);
  conv3 and the FC layers see both (Sec. 3.2). `groups=1` gives the single-tower form of the same widths;
- FC6 and FC7 of 4096 with dropout 0.5 on their outputs (Sec. 4.2), FC8 the classifier;
- init: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden FC layers, 0 elsewhere (Sec. 5).

Readings where the paper is ambiguous: the input is 224x224 with padding 2 on conv1, which gives the paper's 55x55
maps (the paper's 224 only works out with 227 or padding). An adaptive average pool to 6x6 sits before FC6: it is
the identity at 224 and lets the network run at smaller test resolutions.

timm's interface: the classifier has layers after the pooling (FC6, FC7), as timm's VGG has (its `pre_logits`
ConvMlp). As in VGG, they belong to the head: `num_features` is pool5's 256 channels, `head_hidden_size` FC7's 4096,
and `reset_classifier(0)` / `forward_head(x, pre_logits=True)` give FC7's output. Where timm's VGG keeps FC6 and FC7
(as convolutions) when the pooling is removed, here they are linear layers that need the pooled 6x6 map, so
`global_pool=''` removes the whole head: the model returns pool5's unpooled map (`forward_features`, 6x6 at 224).
"""

from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, pretrained_cfg, register
from trainer.models.layers import LocalResponseNorm
from trainer.models.stages import StagedModel

POOLS = ("avg", "")  # the paper's 6x6 average pool before FC6, or none (no head at all)


def _conv(
    in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, padding: int | None = None, groups: int = 1
) -> nn.Conv2d:
    padding = kernel_size // 2 if padding is None else padding
    return nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, groups=groups)


class AlexNet(StagedModel, nn.Module):
    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        groups: int = 2,
        drop_rate: float = 0.5,
        widths: tuple[int, ...] = (96, 256, 384, 384, 256),
        hidden_size: int = 4096,
        act_layer: type[nn.Module] = nn.ReLU,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.stem = nn.Sequential(
            OrderedDict(
                conv=_conv(in_chans, c1, 11, stride=4, padding=2),  # 224 -> 55x55
                act=act_layer(inplace=True),
                norm=LocalResponseNorm(),
            )
        )
        self.stages = nn.Sequential(
            nn.Sequential(
                OrderedDict(
                    pool=nn.MaxPool2d(3, 2),
                    conv=_conv(c1, c2, 5, groups=groups),
                    act=act_layer(inplace=True),
                    norm=LocalResponseNorm(),
                )
            ),
            nn.Sequential(
                OrderedDict(
                    pool=nn.MaxPool2d(3, 2),
                    conv3=_conv(c2, c3, 3),
                    act3=act_layer(inplace=True),  # conv3 sees both towers
                    conv4=_conv(c3, c4, 3, groups=groups),
                    act4=act_layer(inplace=True),
                    conv5=_conv(c4, c5, 3, groups=groups),
                    act5=act_layer(inplace=True),
                )
            ),
            nn.Sequential(OrderedDict(pool=nn.MaxPool2d(3, 2))),
        )
        self.num_features = c5
        self.feature_info = [
            dict(num_chs=c1, reduction=4, module="stem.norm"),
            dict(num_chs=c2, reduction=8, module="stages.0"),
            dict(num_chs=c5, reduction=16, module="stages.1"),
            dict(num_chs=c5, reduction=32, module="stages.2"),
        ]
        self.global_pool: nn.Module = nn.AdaptiveAvgPool2d((6, 6))  # identity at 224 (pool5 is 6x6 there)
        self.use_head = True  # False: global_pool='' (no pooling, so no FC6-FC8 either)
        self.pre_logits = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(1),
                fc6=nn.Linear(c5 * 36, hidden_size),
                act6=act_layer(inplace=True),
                drop6=nn.Dropout(drop_rate),
                fc7=nn.Linear(hidden_size, hidden_size),
                act7=act_layer(inplace=True),
                drop7=nn.Dropout(drop_rate),
            )
        )
        self.head_hidden_size = hidden_size
        self.fc = nn.Linear(hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()
        self._set_pool(global_pool, num_classes)

    def _set_pool(self, global_pool: str, num_classes: int) -> None:
        if global_pool not in POOLS:
            raise ConfigError(f"alexnet: global_pool={global_pool!r} is not one of 'avg' (the paper's 6x6) or ''")
        if not global_pool and num_classes > 0:
            raise ConfigError("alexnet: global_pool='' leaves FC6-FC8 no input; it needs num_classes=0")
        self.use_head = bool(global_pool)

    def _init_weights(self) -> None:
        ones = {
            self.stages[0].conv,
            self.stages[1].conv4,
            self.stages[1].conv5,
            self.pre_logits.fc6,
            self.pre_logits.fc7,
        }  # Sec. 5: bias 1 speeds up early learning
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 1.0 if m in ones else 0.0)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new FC8 for `num_classes` (0: none); `global_pool=''` also removes the pooling and FC6-FC7."""
        self._set_pool(("avg" if self.use_head else "") if global_pool is None else global_pool, num_classes)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def trunk(self) -> list[nn.Module]:
        return [self.stem, *self.stages]

    def feature_ends(self) -> list[int]:
        return [0, 1, 2, 3]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self.run_stages(x)
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not self.use_head:
            return x
        x = self.pre_logits(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_alexnet(variant: str, pretrained: bool = False, **kwargs: Any) -> AlexNet:
    return build_model_with_cfg(
        AlexNet,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


PAPER = Paper("ImageNet Classification with Deep Convolutional Neural Networks", "Krizhevsky, Sutskever, Hinton", 2012)


default_cfgs = generate_default_cfgs(
    {
        "alexnet": pretrained_cfg(
            pool_size=(6, 6),
            first_conv="stem.conv",
            classifier="fc",
            paper_ids="NeurIPS 2012",
            paper_name=PAPER.title,
        )
    }
)


@register_model
def alexnet(pretrained: bool = False, **kwargs: Any) -> AlexNet:
    """AlexNet (Krizhevsky et al. 2012), the paper's two-tower network; `groups=1` for one tower."""
    return _create_alexnet("alexnet", pretrained, **kwargs)


register(
    ModelEntry(
        name="alexnet",
        builder="alexnet",
        family="alexnet",
        paper=PAPER,
        params=60_965_224,
        recipe="alexnet",
        min_resolution=63,  # conv1 11x11/4, then three unpadded 3x3/2 max-pools
        top1=59.3,
        top5=81.8,
        protocol="10-crop (one CNN, ILSVRC-2012 val)",
        source="own",
        notes="paper's two-tower grouping; torchvision's single-tower variant has 61.10 M parameters",
    )
)
