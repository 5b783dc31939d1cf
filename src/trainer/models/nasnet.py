"""NASNet-A, Zoph, Vasudevan, Shlens & Le, "Learning Transferable Architectures for Scalable Image Recognition",
CVPR 2018 (arXiv:1707.07012).

NASNet-A Large (6 @ 4032): timm's `nasnetalarge`, ported from the authors' TF-slim release (88.75 M parameters
against the paper's 88.9 M). Input 331 px. The eval crop: the paper does not give one; the TF-slim release
evaluates with its inception preprocessing, a 0.875 centre crop, which is used here (timm's cfg says 0.911, from the
Cadene port). Accuracy: Table 2, single crop (82.7 / 96.2 %). The auxiliary head of the paper's training is not in
timm's model.

NASNet-A Mobile (4 @ 1056, Table 2: 5.3 M parameters, 564 M mult-adds, 74.0 / 91.6 %) has no timm implementation;
`NASNetA` here builds it (and any "N @ P" NASNet-A) as the TF-slim release does (nets/nasnet/nasnet.py,
`mobile_imagenet_config`, and nasnet_utils.py):
- the normal and reduction cells of Fig. 4 as TF-slim's (operation, hidden state) lists: five blocks per cell, each
  adding two operations; separable ops are ReLU-sepconv-BN-ReLU-sepconv-BN (the paper applies each twice), pools
  3x3, identity; in a reduction cell the operations on the cell's two inputs have stride 2;
- the cell's input goes through ReLU-1x1 conv-BN; the previous cell's output through the "factorized reduction"
  (two 1x1 convs on the two pixel-offset stride-2 grids, concatenated) where it has twice the resolution, and
  through ReLU-1x1 conv-BN where only its width differs;
- stem: 3x3/2 convolution (32 filters, unpadded), then two reduction cells with F/4 and F/2 filters (F = P / 24 = 44,
  filter scaling 2); N = 4 normal cells per stack, reduction cells with 2F and 4F between the stacks;
  `skip_reduction_layer_input=0`: the cell after a reduction cell takes the last normal cell as its previous input
  (NASNet-A Large skips it and takes the one before; `skip_reduction_input=True`);
- the auxiliary head on the ReLU of the second stack's last normal cell (TF-slim: cell index `reduction_indices[1] -
  1`): 5x5/3 average pool (unpadded), 1x1 conv 128, BN, ReLU, a conv to 768 whose kernel covers the remaining map
  (4x4 at 224 px, from `img_size`), BN, ReLU, FC. In training mode the model returns (main, aux); `aux_logits=False`
  removes the head. An adaptive average pool to the kernel size (the identity at 224 px) lets the head run at other
  input sizes; its unpadded 5x5 pool needs a 5x5 map at stride 16, so the entry's `min_resolution` is 67 px (the
  network alone runs from 32);
- drop-path (ScheduledDropPath, Sec. 4.1) on the output of every operation but the identity, per sample and
  rescaled as TF-slim's `drop_path`; cell l of the 16 (stem cells included) gets `drop_path_rate * (l + 1) / 16`
  (TF-slim's layer scaling). The rate's rise over training is the ScheduledDropPath callback's. The mobile
  config's keep prob is 1.0, so the default `drop_path_rate=0` builds no drop-path modules;
- dropout 0.5 before the classifier (`dense_dropout_keep_prob`); weights from TF-slim's
  `variance_scaling_initializer(mode='FAN_OUT')` (truncated normal, std sqrt(1.3 * 2 / fan_out)).
Reused from timm (timm/models/nasnet.py): `ActConvBn` (ReLU-1x1 conv-BN), `BranchSeparables` (the stacked separable
op), the pools (`create_pool2d`, TF "SAME" padding; its stride-2 average pool counts the one padded border row,
which TF does not), the stem `ConvNormAct` and its BN settings (eps 1e-3, momentum
0.1; TF-slim decays its BN averages by 0.9997). timm's cell classes are not reused: they hard-code each cell's
wiring and have no drop-path. The cells here keep their module names, so timm's `nasnetalarge` weights load into
`NASNetA(cells_per_stack=6, penultimate_filters=4032, stem_size=96, skip_reduction_input=True)` unchanged (a test
checks the outputs agree). The catalogue's `nasnet_a_large` is that network with the paper's auxiliary head and
drop-path (timm's own has neither; `model=timm/nasnetalarge` still builds it). `checkpoint_filter_fn` maps the Cadene
port's NASNet-A Mobile cell numbering (cell_6..9, cell_12..15) to TF-slim's contiguous one. `forward_intermediates` and
`prune_intermediate_layers` are those of timm's `nasnetalarge` (levels: conv0's output, then cells' outputs after
ReLU); the network scripts with TorchScript.
Eval: 0.875 centre crop and [-1, 1] input scaling (TF-slim's inception preprocessing). `entry.params` counts the
inference network, the paper's 5.3 M / 88.9 M; `entry.aux_params` the auxiliary head the default build adds.
"""

import math
import re
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import ConvNormAct, create_classifier
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model

from trainer.errors import ConfigError
from trainer.models.catalogue import ModelEntry, Paper, pretrained_cfg, register
from trainer.models.nasnet_cells import NORMAL_CELL, REDUCTION_CELL, AuxHead, NASNetACell, _BatchNorm
from trainer.models.stages import take_indices


def _stride16_size(img_size: int) -> int:
    """The map size at stride 16 for an input of `img_size`: unpadded 3x3/2 stem conv, then three "SAME" stride-2
    cells."""
    size = (img_size - 3) // 2 + 1
    for _ in range(3):
        size = math.ceil(size / 2)
    return size


class NASNetA(nn.Module):
    """NASNet-A "N @ P": `cells_per_stack` (N) normal cells per stack, `penultimate_filters` (P) channels into the
    classifier (F = P / 24 filters per block in the first stack)."""

    # names of the normal and reduction cells in order, and of the cells that end feature levels 1..; class-level
    # annotations are TorchScript's types for lists that may be empty (prune_intermediate_layers empties them)
    cell_names: list[str]
    feature_cells: list[str]

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        cells_per_stack: int = 4,
        penultimate_filters: int = 1056,
        stem_size: int = 32,
        skip_reduction_input: bool = False,
        aux_logits: bool = True,
        img_size: int = 224,
        drop_rate: float = 0.5,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        pad_type: str = "same",
    ) -> None:
        super().__init__()
        if cells_per_stack < 1:
            raise ConfigError(f"nasnet: cells_per_stack={cells_per_stack} is not a positive number of cells")
        if penultimate_filters <= 0 or penultimate_filters % 96:
            # F = P / 24 filters; the second stem cell's factorized reduction splits F / 2 into two equal halves
            raise ConfigError(f"nasnet: penultimate_filters={penultimate_filters} is not a positive multiple of 96")
        for rate_name, rate in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
            if not 0.0 <= rate < 1.0:
                raise ConfigError(f"nasnet: {rate_name}={rate} is outside [0, 1)")
        if aux_logits and _stride16_size(img_size) < 5:
            raise ConfigError(f"nasnet: img_size={img_size} is too small for the auxiliary head (at least 67)")
        self.num_classes = num_classes
        self.grad_checkpointing = False
        self.aux_logits = aux_logits  # what callers (the recipe check) read, as for timm's Inception v3
        self.skip_reduction_input = skip_reduction_input
        filters = penultimate_filters // 24
        num_cells = 2 + 3 * cells_per_stack + 2  # stem cells, normal cells, reduction cells
        rates = [drop_path_rate * (i + 1) / num_cells for i in range(num_cells)]
        cell = partial(NASNetACell, pad_type=pad_type)

        self.conv0 = ConvNormAct(in_chans, stem_size, 3, stride=2, padding=0, norm_layer=_BatchNorm, apply_act=False)
        stem_chs = (4 * (filters // 4), 4 * (filters // 2))  # reduction cells concatenate four blocks
        self.cell_stem_0 = cell(REDUCTION_CELL, stem_size, None, filters // 4, reduction=True, drop_path_rate=rates[0])
        self.cell_stem_1 = cell(
            REDUCTION_CELL,
            stem_chs[0],
            stem_size,
            filters // 2,
            reduction=True,
            reduce_prev=True,
            drop_path_rate=rates[1],
        )
        chs_prev, chs = stem_chs  # channels of the previous and the current output
        reduce_prev = True  # the previous output has twice the current resolution
        self.cell_names = []
        num_normal = 0
        for stack in range(3):
            width = filters * 2**stack
            if stack > 0:
                name = f"reduction_cell_{stack - 1}"
                rate = rates[2 + len(self.cell_names)]
                self.add_module(name, cell(REDUCTION_CELL, chs, chs_prev, width, reduction=True, drop_path_rate=rate))
                self.cell_names.append(name)
                chs_prev, chs, reduce_prev = (chs_prev if skip_reduction_input else chs), 4 * width, True
            for _ in range(cells_per_stack):
                name, num_normal = f"cell_{num_normal}", num_normal + 1
                rate = rates[2 + len(self.cell_names)]
                normal = cell(NORMAL_CELL, chs, chs_prev, width, reduce_prev=reduce_prev, drop_path_rate=rate)
                self.add_module(name, normal)
                self.cell_names.append(name)
                chs_prev, chs, reduce_prev = chs, 6 * width, False
        self.act = nn.ReLU(inplace=True)
        self.num_features = self.head_hidden_size = chs

        # TF-slim: after the cell before the second reduction cell, i.e. the second stack's last normal cell
        self.aux_cell = f"cell_{2 * cells_per_stack - 1}"
        aux_kernel = (_stride16_size(img_size) - 5) // 3 + 1
        self.aux_head = AuxHead(12 * filters, num_classes, aux_kernel) if aux_logits else None

        self.global_pool, self.head_drop, self.last_linear = create_classifier(
            chs, num_classes, pool_type=global_pool, drop_rate=drop_rate
        )
        self.feature_info = [
            dict(num_chs=stem_size, reduction=2, module="conv0"),
            dict(num_chs=stem_chs[0], reduction=4, module="cell_stem_1.conv_1x1.act"),
            dict(num_chs=6 * filters, reduction=8, module="reduction_cell_0.conv_1x1.act"),
            dict(num_chs=12 * filters, reduction=16, module="reduction_cell_1.conv_1x1.act"),
            dict(num_chs=chs, reduction=32, module="act"),
        ]  # the cells' outputs after the ReLU the next cell starts with
        # the cells whose outputs are feature levels 1.. (level 0 is conv0's), as timm's nasnetalarge taps them
        self.feature_cells = ["cell_stem_0", f"cell_{cells_per_stack - 1}", self.aux_cell, self.cell_names[-1]]
        self._init_weights()

    def _init_weights(self) -> None:
        # TF-slim: variance_scaling_initializer(mode='FAN_OUT'), a normal truncated at 2 std of sqrt(1.3 * 2 / n)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                receptive = m.weight[0, 0].numel()  # kernel area (1 for a linear layer)
                fan_out = m.weight.shape[0] // getattr(m, "groups", 1) * receptive
                std = math.sqrt(2.6 / fan_out)
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.last_linear

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        pool_type = self.global_pool.pool_type if global_pool is None else global_pool
        self.global_pool, self.last_linear = create_classifier(self.num_features, num_classes, pool_type=pool_type)
        if self.aux_head is not None:
            self.aux_head.fc = nn.Linear(768, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each cell in the backward pass (timm's gradient checkpointing)."""
        self.grad_checkpointing = enable

    def _forward_trunk(
        self, x: torch.Tensor, take: list[int], stop: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """The stem conv and the cells up to feature level `stop`. Returns the features there (a cell's output after
        the ReLU the next cell would start with; level 0, conv0's output, as it is), the auxiliary head's input (None
        where its cell did not run) and the levels in `take`, in forward order."""
        x = self.conv0(x)
        x_prev: torch.Tensor | None = None
        aux_input: torch.Tensor | None = None
        intermediates: list[torch.Tensor] = []
        if 0 in take:
            intermediates.append(x)
        level = 0
        for name, cell in self.named_children():  # the cells in build order (TorchScript unrolls this loop)
            # the cells are the children with a conv_1x1 (a static test in TorchScript, which compiles each cell as
            # a type of its own, so that isinstance would miss all but one)
            if hasattr(cell, "conv_1x1") and level < stop:
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    out = checkpoint(cell, x, x_prev)
                else:
                    out = cell(x, x_prev)
                # the next cell's previous input: after a reduction cell, see skip_reduction_input
                keep_prev = self.skip_reduction_input and name.startswith("reduction")
                x, x_prev = out, (x_prev if keep_prev else x)
                if name == self.aux_cell:
                    aux_input = x
                if name in self.feature_cells:
                    level += 1
                    if level in take:
                        intermediates.append(torch.relu(x))
        return (self.act(x) if level > 0 else x), aux_input, intermediates

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's `forward_intermediates` (as its nasnetalarge's): the `feature_info` levels `indices` (None all, an
        int the last n, a sequence those levels), in forward order, and unless `intermediates_only` the final
        features. Level 0 is conv0's output, the others are cells' outputs after the ReLU the next cell starts with.
        `stop_early` ends the trunk at the last level taken (the final features are then that level); `norm` does
        nothing (there is no final norm)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: NASNet-A gives NCHW maps only")
        taken = take_indices(len(self.feature_cells) + 1, indices)
        stop = max(taken) if stop_early or intermediates_only else len(self.feature_cells)
        x, _, intermediates = self._forward_trunk(x, taken, stop)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """timm's: remove the cells after the last level `indices` keeps (and the auxiliary head if its cell goes).
        The features then end at that level, and the classifier, sized for the removed width, goes too. `prune_norm`
        does nothing (there is no final norm). Returns the levels kept."""
        taken = take_indices(len(self.feature_cells) + 1, indices)
        level = max(taken)
        cells = ["cell_stem_0", "cell_stem_1", *self.cell_names]
        kept = cells.index(self.feature_cells[level - 1]) + 1 if level > 0 else 0
        for name in cells[kept:]:
            delattr(self, name)
        self.cell_names = [n for n in self.cell_names if hasattr(self, n)]
        pruned_end = level < len(self.feature_cells)
        self.feature_cells = self.feature_cells[:level]
        if not hasattr(self, self.aux_cell):
            self.aux_head, self.aux_logits = None, False
        if pruned_end:
            self.num_features = self.head_hidden_size = self.feature_info[level]["num_chs"]
        if prune_head or pruned_end:
            self.reset_classifier(0, "")
        return taken

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_trunk(x, [], len(self.feature_cells))[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.last_linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x, aux_input, _ = self._forward_trunk(x, [], len(self.feature_cells))
        logits = self.forward_head(x)
        if self.training and self.aux_head is not None and self.num_classes > 0:  # TF-slim: only with a classifier
            assert aux_input is not None  # the aux cell always runs; TorchScript needs the Optional refined
            return logits, self.aux_head(aux_input)
        return logits


_CADENE_MOBILE_CELLS = {6: 4, 7: 5, 8: 6, 9: 7, 12: 8, 13: 9, 14: 10, 15: 11}


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The Cadene port of NASNet-A Mobile numbers its cells 0-3, 6-9, 12-15 (NASNet-A Large's numbers); TF-slim and
    this model number them 0-11. Other keys are the same."""
    if not isinstance(model, NASNetA) or "cell_15.conv_1x1.conv.weight" not in state_dict or hasattr(model, "cell_15"):
        return state_dict

    def rename(key: str) -> str:
        m = re.match(r"cell_(\d+)\.", key)
        return f"cell_{_CADENE_MOBILE_CELLS[int(m[1])]}.{key[m.end() :]}" if m and int(m[1]) > 3 else key

    return {rename(k): v for k, v in state_dict.items()}


def _create_nasnet(variant: str, pretrained: bool = False, **kwargs: Any) -> NASNetA:
    # the cells take two inputs, so features come from hooks on the unchanged model (as timm's nasnetalarge)
    return build_model_with_cfg(
        NASNetA, variant, pretrained, feature_cfg=dict(feature_cls="hook", no_rewrite=True), **kwargs
    )


PAPER = Paper(
    "Learning Transferable Architectures for Scalable Image Recognition",
    "Zoph, Vasudevan, Shlens, Le",
    2018,
    "1707.07012",
)


default_cfgs = generate_default_cfgs(
    {
        "nasnet_a_mobile": pretrained_cfg(
            mean=IMAGENET_INCEPTION_MEAN,
            std=IMAGENET_INCEPTION_STD,
            first_conv="conv0.conv",
            classifier=("last_linear", "aux_head.fc"),  # the main and the auxiliary head
            paper_ids="arXiv:1707.07012",
            paper_name=PAPER.title,
        ),
        "nasnet_a_large": pretrained_cfg(
            input_size=(3, 331, 331),
            pool_size=(11, 11),
            mean=IMAGENET_INCEPTION_MEAN,
            std=IMAGENET_INCEPTION_STD,
            first_conv="conv0.conv",
            classifier=("last_linear", "aux_head.fc"),  # the main and the auxiliary head
            paper_ids="arXiv:1707.07012",
            paper_name=PAPER.title,
        ),
    }
)


@register_model
def nasnet_a_mobile(pretrained: bool = False, **kwargs: Any) -> NASNetA:
    """NASNet-A Mobile (4 @ 1056), TF-slim's mobile ImageNet config, with the auxiliary head."""
    model_args = dict(cells_per_stack=4, penultimate_filters=1056, stem_size=32, skip_reduction_input=False)
    return _create_nasnet("nasnet_a_mobile", pretrained, **dict(model_args, **kwargs))


@register_model
def nasnet_a_large(pretrained: bool = False, **kwargs: Any) -> NASNetA:
    """NASNet-A Large (6 @ 4032) at 331 px: timm's nasnetalarge cells (its weights load), with the paper's auxiliary
    head and drop-path."""
    model_args = dict(
        cells_per_stack=6, penultimate_filters=4032, stem_size=96, skip_reduction_input=True, img_size=331
    )
    return _create_nasnet("nasnet_a_large", pretrained, **dict(model_args, **kwargs))


register(
    ModelEntry(
        name="nasnet_a_large",
        builder="nasnet_a_large",
        family="nasnet",
        paper=PAPER,
        params=88_753_150,  # Table 2: 88.9 M; the auxiliary head adds 4,567,784 (93.32 M in all)
        aux_params=4_567_784,
        recipe="nasnet",
        resolution=331,
        min_resolution=67,  # the auxiliary head's unpadded 5x5 pool needs a 5x5 map at stride 16
        top1=82.7,
        top5=96.2,
        protocol="1-crop (Table 2)",
        source="own",
        notes=(
            "timm's nasnetalarge cells (88.75 M parameters, its weights load) plus the paper's auxiliary head and "
            "drop-path (built with the auxiliary head: aux params); model=timm/nasnetalarge for timm's"
        ),
    )
)

register(
    ModelEntry(
        name="nasnet_a_mobile",
        builder="nasnet_a_mobile",
        family="nasnet",
        paper=PAPER,
        params=5_289_978,  # Table 2: 5.3 M; the auxiliary head adds 2,411,240 (7.70 M in all)
        aux_params=2_411_240,
        recipe="nasnet",
        min_resolution=67,  # the auxiliary head's unpadded 5x5 pool needs a 5x5 map at stride 16
        top1=74.0,
        top5=91.6,
        protocol="1-crop (Table 2)",
        source="own",
        notes="built with the auxiliary head (aux params; aux_logits=False drops it); TF-slim's mobile config",
    )
)
