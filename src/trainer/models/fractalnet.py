"""FractalNet, Larsson, Maire & Shakhnarovich, "FractalNet: Ultra-Deep Neural Networks without Residuals", ICLR 2017
(arXiv:1605.07648).

A block is the fractal of Sec. 2 (Fig. 1): f_1(z) = conv(z), f_{C+1}(z) = join(f_C(f_C(z)), conv(z)), where conv is a
3x3 convolution with BN and ReLU and join is the element-wise mean of its inputs. Columns are numbered by depth:
column k has 2^(k-1) convolutions, so the deepest column C has 2^(C-1) and a block 2^C - 1 in all. Nested joins
that meet at one point are one join of all the columns that end there (Fig. 1 draws them so; the authors' Caffe
generator, github.com/gustavla/fractalnet, wires one mean of 2, 3 or 4 inputs). Blocks are joined by 2x2/2
max-pooling. Every convolution is conv -> dropout -> BN -> ReLU, the order of the authors' Caffe layers; the paper
gives a dropout rate per block (Sec. 4: 0, 10, 20, 30, 40 % for its five CIFAR blocks).

Variants (Sec. 4):
- CIFAR (`fractalnet20_cifar`, `fractalnet40_cifar`): B=5 blocks of 64, 128, 256, 512, 512 channels, C=3 or 4; the
  first block sees the image, every block is followed by a max-pool (32 -> 1 px), then the classifier. Depth counts
  convolutions along the deepest path, B * 2^(C-1) = 20 or 40 (the classifier is not counted). At 32 px the last
  pool leaves 1x1 maps; a global average pool follows so the network runs at larger inputs too.
- ImageNet (`fractalnet34`, Sec. 4.3): ResNet-34's first and last layers (7x7/2 conv with BN-ReLU, 3x3/2 max-pool;
  global average pool, 1000-way FC) around B=4 blocks of C=4 columns (8 layers each) with 64, 128, 256, 512 channels:
  1 + 4 * 8 + 1 = 34 layers. Max-pools between the blocks give ResNet-34's strides 4, 8, 16, 32.

Drop-path (Sec. 3.1), sampled once per mini-batch on the host: with probability `global_drop_ratio` (0.5, the paper's
50/50 mix) global drop-path keeps one column, chosen uniformly, for the whole network; otherwise every join drops
each of its inputs with probability `drop_path_rate` (local, 0.15 in the paper), keeping one at random if it drops
them all. A join averages the inputs it keeps. Dropped paths are multiplied by zero rather than skipped (as the
authors' Caffe join does), so every parameter gets a gradient in every step (DDP sees all parameters used); a
global batch therefore costs as much as a full one. `drop_path_rate=0` and `global_drop_ratio=0` train the whole
network. `eval_column=k` runs column k alone in eval mode (the paper's "deepest column" results and anytime
prediction); it can be changed after construction (`model.eval_column = k`).

Readings of our own: the join at the end of a block comes before the max-pool (Fig. 1; the Caffe generator pools
each column before that join); convolutions have no bias (BN follows) and start from Caffe's "xavier" fill,
U(+-sqrt(3 / fan_in)), as the authors' nets; the CIFAR entries use CIFAR-10 input statistics. `drop_rate` is the
last block's dropout rate, block b of B getting drop_rate * b / (B - 1) (0.4 gives the paper's schedule);
`block_drop_rates` sets each block's rate. timm's drop-path tools do not apply: these joins are not residual branches.
"""

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, pretrained_cfg, register
from trainer.models.fractal_blocks import DropPathSampler, FractalBlock, PathChoice
from trainer.models.preact_resnet import CIFAR10_MEAN, CIFAR10_STD, check_rate
from trainer.models.stages import StagedModel


class FractalNet(StagedModel, nn.Module):
    """Optional stem, B fractal blocks of C columns (`channels` gives B and the widths) joined by 2x2 max-pools,
    optional last max-pool, global average pool, classifier; drop-path drawn by `path_sampler` at the input."""

    __jit_unused_properties__ = ["eval_column", "drop_path_generator"]  # Python-side settings, not for TorchScript

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        channels: Sequence[int] = (64, 128, 256, 512),
        num_columns: int = 4,
        stem: bool = True,
        final_pool: bool = False,
        drop_rate: float = 0.0,
        block_drop_rates: Sequence[float] | None = None,
        drop_path_rate: float = 0.15,
        global_drop_ratio: float = 0.5,
        eval_column: int | None = None,
        global_pool: str = "avg",
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        num_blocks = len(channels)
        if num_columns < 1:
            raise ConfigError(f"fractalnet: num_columns={num_columns} must be at least 1")
        if num_blocks < 1:
            raise ConfigError(f"fractalnet: channels={tuple(channels)} gives B=0 blocks; give one width per block")
        check_rate("fractalnet", "drop_rate", drop_rate)
        check_rate("fractalnet", "drop_path_rate", drop_path_rate)
        if not 0.0 <= global_drop_ratio <= 1.0:
            raise ConfigError(f"fractalnet: global_drop_ratio={global_drop_ratio} is outside [0, 1]")
        if block_drop_rates is None:
            block_drop_rates = [drop_rate * b / max(num_blocks - 1, 1) for b in range(num_blocks)]
            block_drop_rates[-1] = drop_rate  # exact, and B=1 gets drop_rate
        elif len(block_drop_rates) != num_blocks:
            raise ConfigError(
                f"fractalnet: block_drop_rates={tuple(block_drop_rates)} has {len(block_drop_rates)} rates "
                f"for {num_blocks} blocks"
            )
        for rate in block_drop_rates:
            check_rate("fractalnet", "block_drop_rates", rate)
        self.num_classes = num_classes
        self.num_columns = num_columns
        self.grad_checkpointing = False
        self.block_drop_rates = tuple(block_drop_rates)
        self.paths = PathChoice()
        self.eval_column = eval_column

        self.path_sampler = DropPathSampler(self.paths, num_columns, drop_path_rate, global_drop_ratio)
        if stem:  # Sec. 4.3: ResNet-34's first layers
            stem_chs, reduction = 64, 4
            self.stem = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_chans, stem_chs, 7, stride=2, padding=3, bias=False),
                    bn=norm_layer(stem_chs),
                    act=act_layer(inplace=True),
                    pool=nn.MaxPool2d(3, stride=2, padding=1),
                )
            )
        else:  # CIFAR: the first block sees the image
            stem_chs, reduction = in_chans, 1
            self.stem = nn.Identity()
        stages, self.feature_info, in_chs = [], [], stem_chs
        for b, (out_chs, rate) in enumerate(zip(channels, self.block_drop_rates, strict=True)):
            stage = OrderedDict(pool=nn.MaxPool2d(2, stride=2)) if b > 0 else OrderedDict()
            stage["block"] = FractalBlock(in_chs, out_chs, num_columns, self.paths, rate, act_layer, norm_layer)
            stages.append(nn.Sequential(stage))
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction * 2**b, module=f"stages.{b}"))
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)
        self.eval_column = eval_column  # again, now that the blocks exist (their TorchScript copy of it)
        self.num_features = self.head_hidden_size = in_chs
        # CIFAR: a pool after each block, the last one too; it ends the trunk (pretrained_cfg's pool_size is after it)
        self.final_pool = nn.MaxPool2d(2, stride=2) if final_pool else nn.Identity()
        self.global_pool, self.fc = create_classifier(in_chs, num_classes, pool_type=global_pool)
        self._init_weights()

    def _init_weights(self) -> None:
        # the authors' Caffe nets: "xavier" weights (Caffe's: U(+-sqrt(3 / fan_in))), zero biases
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="linear")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def eval_column(self) -> int | None:
        """The column that runs alone in eval mode (1 = one convolution per block, C = the deepest); None: all."""
        return self.paths.eval_column

    @eval_column.setter
    def eval_column(self, column: int | None) -> None:
        if column is not None and not 1 <= column <= self.num_columns:
            raise ConfigError(f"fractalnet: eval_column={column} is outside 1..{self.num_columns} (num_columns)")
        self.paths.eval_column = column
        for module in self.modules():
            if isinstance(module, FractalBlock):
                module.scripted_column = column or 0

    @property
    def drop_path_generator(self) -> torch.Generator | None:
        """The host generator of the drop-path draws (None: torch's default CPU generator)."""
        return self.paths.generator

    @drop_path_generator.setter
    def drop_path_generator(self, generator: torch.Generator | None) -> None:
        self.paths.generator = generator

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        pool_type = self.global_pool.pool_type if global_pool is None else global_pool
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=pool_type)

    def trunk(self) -> list[nn.Module]:
        return [self.path_sampler, self.stem, *self.stages, self.final_pool]

    def feature_ends(self) -> list[int]:
        return [2 + b for b in range(len(self.stages))]  # after the sampler and the stem

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            # the sampler saves nothing for backward, so it draws once; a recomputed block redraws its local joins
            # from the RNG state checkpointing restores, so it takes the same paths
            return self.run_stages(x)
        return self.final_pool(self.stages(self.stem(self.path_sampler(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@dataclass(frozen=True)
class FractalNetCfg:
    channels: tuple[int, ...]  # one width per block: B = len(channels)
    num_columns: int  # C
    stem: bool  # ResNet-34's first layers (ImageNet) or none (CIFAR)
    final_pool: bool  # CIFAR: the max-pool after the last block


CIFAR_CHANNELS = (64, 128, 256, 512, 512)  # Sec. 4
VARIANTS = {
    "fractalnet34": FractalNetCfg((64, 128, 256, 512), num_columns=4, stem=True, final_pool=False),
    "fractalnet20_cifar": FractalNetCfg(CIFAR_CHANNELS, num_columns=3, stem=False, final_pool=True),
    "fractalnet40_cifar": FractalNetCfg(CIFAR_CHANNELS, num_columns=4, stem=False, final_pool=True),
}


def _create_fractalnet(variant: str, pretrained: bool = False, **kwargs: Any) -> FractalNet:
    cfg = VARIANTS[variant]
    model_args = dict(channels=cfg.channels, num_columns=cfg.num_columns, stem=cfg.stem, final_pool=cfg.final_pool)
    model_args.update(kwargs)
    return build_model_with_cfg(
        FractalNet,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=tuple(range(len(model_args["channels"])))),
        **model_args,
    )


PAPER = Paper(
    "FractalNet: Ultra-Deep Neural Networks without Residuals", "Larsson, Maire, Shakhnarovich", 2017, "1605.07648"
)


default_cfgs = generate_default_cfgs(
    {
        "fractalnet34": pretrained_cfg(
            first_conv="stem.conv",
            classifier="fc",
            paper_ids="arXiv:1605.07648",
            paper_name=PAPER.title,
        ),
        **{
            name: pretrained_cfg(
                input_size=(3, 32, 32),
                pool_size=(1, 1),
                crop_pct=1.0,
                mean=CIFAR10_MEAN,
                std=CIFAR10_STD,
                first_conv="stages.0.block.columns.0.0.conv",
                classifier="fc",
                paper_ids="arXiv:1605.07648",
                paper_name=PAPER.title,
            )
            for name in ("fractalnet20_cifar", "fractalnet40_cifar")
        },
    }
)


@register_model
def fractalnet34(pretrained: bool = False, **kwargs: Any) -> FractalNet:
    """FractalNet-34 (Larsson et al. 2017, Sec. 4.3): ResNet-34's stem and head, 4 blocks of 4 columns."""
    return _create_fractalnet("fractalnet34", pretrained, **kwargs)


@register_model
def fractalnet20_cifar(pretrained: bool = False, **kwargs: Any) -> FractalNet:
    """FractalNet for CIFAR, 20 layers (Larsson et al. 2017, Sec. 4): 5 blocks of 3 columns."""
    return _create_fractalnet("fractalnet20_cifar", pretrained, **kwargs)


@register_model
def fractalnet40_cifar(pretrained: bool = False, **kwargs: Any) -> FractalNet:
    """FractalNet for CIFAR, 40 layers (Larsson et al. 2017, Sec. 4): 5 blocks of 4 columns."""
    return _create_fractalnet("fractalnet40_cifar", pretrained, **kwargs)


register(
    ModelEntry(
        name="fractalnet34",
        builder="fractalnet34",
        family="fractalnet",
        paper=PAPER,
        params=41_359_784,
        recipe="fractalnet",
        top1=75.88,
        top5=92.61,
        protocol="10-crop (Table 2)",
        source="own",
        notes="drop-path local 0.15 / global 0.5 by default; runs from 29 px, catalogue floor 32",
    )
)

# Table 1, test error (%): the 20-layer net with drop-path and dropout (the recipe's form; 10.18 / 5.22 / 35.34 /
# 23.30 without them), the 40-layer one as reported (C10+ and C100+ only, no dropout or drop-path given). Table 1
# prints 38.6 M and 22.9 M parameters for them; the widths of Sec. 4 (64, 128, 256, 512, 512) give 33.7 M and 76.1 M
# at 10 classes, and the paper names no other widths: the code follows Sec. 4's text, so the counts differ.
CIFAR_ERROR = {
    "fractalnet20_cifar": {"C10": 7.33, "C10+": 4.60, "C100": 28.20, "C100+": 23.73},
    "fractalnet40_cifar": {"C10+": 5.24, "C100+": 22.49},
}
CIFAR_PARAMS = {"fractalnet20_cifar": 33_724_618, "fractalnet40_cifar": 76_106_634}  # at 10 classes

for _name, _params, _depth in (("fractalnet20_cifar", 34_232_488, 20), ("fractalnet40_cifar", 76_614_504, 40)):
    register(
        ModelEntry(
            name=_name,
            builder=_name,
            family="fractalnet",
            paper=PAPER,
            params=_params,
            recipe="fractalnet_cifar",
            resolution=32,
            crop_ratio=1.0,  # CIFAR images are used whole
            min_resolution=32,  # five 2x2 max-pools
            protocol="no ImageNet result: CIFAR test error in cifar_error",
            source="own",
            cifar_error=CIFAR_ERROR[_name],
            cifar_params=CIFAR_PARAMS[_name],
            notes=f"CIFAR network of {_depth} convolutions on the deepest path (params at 1000 classes)",
        )
    )
