"""NASNet-A's cells (Zoph et al. 2018, Fig. 4, as TF-slim's nasnet_utils.py builds them) and its auxiliary head:
the building blocks of `NASNetA` (trainer/models/nasnet.py, whose docstring describes them)."""

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
from timm.layers import DropPath, create_pool2d
from timm.models.nasnet import ActConvBn, BranchSeparables

_BatchNorm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.1)  # timm's NASNet blocks use these too


@dataclass(frozen=True)
class CellSpec:
    """A NASNet-A cell as TF-slim's nasnet_utils lists it. Hidden states: 0 is the cell's input after its 1x1 conv,
    1 the previous cell's output matched to it, 2.. the blocks' outputs. Block b adds operations 2b and 2b + 1."""

    operations: tuple[str, ...]
    inputs: tuple[int, ...]  # the hidden state each operation reads
    concat: tuple[int, ...]  # the hidden states concatenated into the cell's output (TF-slim: the "unused" ones)

    def __post_init__(self) -> None:
        if not len(self.operations) == len(self.inputs) == 10:  # NASNetACell.forward names the ten operations
            raise ValueError("a NASNet-A cell has five blocks of two operations")


NORMAL_CELL = CellSpec(  # Fig. 4, left
    operations=("sep5", "sep3", "sep5", "sep3", "avg3", "none", "avg3", "avg3", "sep3", "none"),
    inputs=(0, 1, 1, 1, 0, 1, 1, 1, 0, 0),
    concat=(1, 2, 3, 4, 5, 6),
)
REDUCTION_CELL = CellSpec(  # Fig. 4, right
    operations=("sep5", "sep7", "max3", "sep7", "avg3", "sep5", "none", "avg3", "sep3", "max3"),
    inputs=(0, 1, 0, 1, 0, 1, 3, 2, 2, 0),
    concat=(3, 4, 5, 6),
)


def _operation(name: str, in_chs: int, filters: int, stride: int, pad_type: str) -> nn.Module:
    if name.startswith("sep"):
        # ReLU-sepconv-BN-ReLU-sepconv-BN; the first separable conv already gives the cell's width (TF-slim)
        return BranchSeparables(in_chs, filters, int(name[3:]), stride, pad_type, stem_cell=True)
    if name == "avg3":  # NASNet-A pools only states of the cell's width, so no 1x1 conv follows (TF-slim would add one)
        return create_pool2d("avg", 3, stride, count_include_pad=False, padding=pad_type)
    return create_pool2d("max", 3, stride, padding=pad_type)


class NASNetACell(nn.Module):
    """A normal or reduction cell with `filters` channels per block.

    `prev_chs=None` is the first stem cell: its previous input is its own input (TF-slim's `_reduce_prev_layer`).
    `reduce_prev`: the previous output has twice the resolution (the factorized reduction matches it).
    The identity operations are `nn.Identity` modules (no parameters, so the state_dict keys stay timm's), which lets
    `forward` name every operation: TorchScript compiles no attribute looked up by a computed name.
    """

    def __init__(
        self,
        spec: CellSpec,
        in_chs: int,
        prev_chs: int | None,
        filters: int,
        reduction: bool = False,
        reduce_prev: bool = False,
        pad_type: str = "same",
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv_1x1 = ActConvBn(in_chs, filters, 1, padding=pad_type)
        self.prev_mode = "input" if prev_chs is None else "factorized" if reduce_prev else "project"
        if self.prev_mode == "factorized":
            self.act = nn.ReLU()
            self.path_1 = nn.Sequential()
            self.path_1.add_module("avgpool", nn.AvgPool2d(1, stride=2, count_include_pad=False))
            self.path_1.add_module("conv", nn.Conv2d(prev_chs, filters // 2, 1, bias=False))
            self.path_2 = nn.Sequential()  # the grid offset by one pixel: shift, zero-pad right and bottom
            self.path_2.add_module("pad", nn.ZeroPad2d((-1, 1, -1, 1)))
            self.path_2.add_module("avgpool", nn.AvgPool2d(1, stride=2, count_include_pad=False))
            self.path_2.add_module("conv", nn.Conv2d(prev_chs, filters - filters // 2, 1, bias=False))
            self.final_path_bn = _BatchNorm(filters)
        elif self.prev_mode == "project":  # TF-slim skips it when the widths agree, which NASNet-A's never do
            self.conv_prev_1x1 = ActConvBn(prev_chs, filters, 1, padding=pad_type)
        state_chs = [filters, in_chs if prev_chs is None else filters]
        for i, (op, state) in enumerate(zip(spec.operations, spec.inputs, strict=True)):
            stride = 2 if reduction and state < 2 else 1
            in_op = state_chs[state] if state < 2 else filters
            module = nn.Identity() if op == "none" else _operation(op, in_op, filters, stride, pad_type)
            self.add_module(f"comb_iter_{i // 2}_{'right' if i % 2 else 'left'}", module)
        self.inputs = list(spec.inputs)
        self.concat = list(spec.concat)
        self.drop_path_on = [op != "none" for op in spec.operations]  # drop-path on every operation but the identity
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _previous(self, x: torch.Tensor, x_prev: torch.Tensor | None) -> torch.Tensor:
        """The previous cell's output matched to this cell (modules looked up with hasattr: TorchScript then compiles
        only the branch this cell has)."""
        if hasattr(self, "final_path_bn"):  # factorized reduction
            assert x_prev is not None
            x_prev = self.act(x_prev)
            return self.final_path_bn(torch.cat([self.path_1(x_prev), self.path_2(x_prev)], 1))
        if hasattr(self, "conv_prev_1x1"):
            assert x_prev is not None
            return self.conv_prev_1x1(x_prev)
        return x  # the first stem cell

    def _drop(self, x: torch.Tensor, op: int) -> torch.Tensor:
        return self.drop_path(x) if self.drop_path_on[op] else x

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor | None = None) -> torch.Tensor:
        s = [self.conv_1x1(x), self._previous(x, x_prev)]  # hidden states 0 and 1; block b appends state b + 2
        i = self.inputs  # the state each operation reads
        s.append(self._drop(self.comb_iter_0_left(s[i[0]]), 0) + self._drop(self.comb_iter_0_right(s[i[1]]), 1))
        s.append(self._drop(self.comb_iter_1_left(s[i[2]]), 2) + self._drop(self.comb_iter_1_right(s[i[3]]), 3))
        s.append(self._drop(self.comb_iter_2_left(s[i[4]]), 4) + self._drop(self.comb_iter_2_right(s[i[5]]), 5))
        s.append(self._drop(self.comb_iter_3_left(s[i[6]]), 6) + self._drop(self.comb_iter_3_right(s[i[7]]), 7))
        s.append(self._drop(self.comb_iter_4_left(s[i[8]]), 8) + self._drop(self.comb_iter_4_right(s[i[9]]), 9))
        return torch.cat([s[j] for j in self.concat], 1)


class AuxHead(nn.Module):
    """TF-slim's `_build_aux_head` on the ReLU of a cell's output."""

    def __init__(self, in_chs: int, num_classes: int, kernel_size: int) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.pool = nn.AvgPool2d(5, stride=3)
        self.fit = nn.AdaptiveAvgPool2d(kernel_size)  # the identity at the input size the kernel was sized for
        self.proj = nn.Conv2d(in_chs, 128, 1, bias=False)
        self.bn0 = _BatchNorm(128)
        self.act0 = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(128, 768, kernel_size, bias=False)  # covers the whole remaining map
        self.bn1 = _BatchNorm(768)
        self.act1 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(768, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.proj(self.fit(self.pool(self.act(x))))))
        x = self.act1(self.bn1(self.conv(x)))
        return self.fc(torch.flatten(x, 1))
