"""FractalNet's building blocks (Larsson, Maire & Shakhnarovich 2017, Sec. 2-3): the join, the drop-path sampler
(local and global paths), the fractal expansion rule's convolution and block. `FractalNet` (trainer/models/
fractalnet.py, whose docstring gives the paper's setup and our readings) stacks them."""

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class PathChoice:
    """Which paths the joins of one network use for the current mini-batch; every block holds the same object."""

    global_column: int | None = None  # training, global drop-path: the one column kept (1..C)
    local_drop_rate: float = 0.0  # training, local drop-path: each join drops each input with this probability
    eval_column: int | None = None  # eval mode: run this column alone (None: the whole network)
    generator: torch.Generator | None = None  # host RNG for the draws (None: torch's default CPU generator)

    def uniform(self) -> float:
        return torch.rand((), device="cpu", generator=self.generator).item()

    def randint(self, high: int) -> int:
        return int(torch.randint(high, (), device="cpu", generator=self.generator).item())


def join(inputs: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Sec. 2: the element-wise mean of the inputs; with `weights` (drop-path), their weighted sum."""
    if len(inputs) == 1:
        return inputs[0]
    if weights is None:
        return sum(inputs[1:], inputs[0]) / len(inputs)
    return sum((x * w for x, w in zip(inputs[1:], weights[1:], strict=True)), inputs[0] * weights[0])


class DropPathSampler(nn.Module):
    """Draws the mini-batch's drop-path (Sec. 3.1) on the host: global (one column for the whole network) with
    probability `global_drop_ratio`, else local at every join. An identity on its input, placed first in the network
    so that every forward pass, timm's feature extractor's too, draws once before the first join."""

    def __init__(self, paths: PathChoice, num_columns: int, drop_path_rate: float, global_drop_ratio: float) -> None:
        super().__init__()
        self.paths = paths
        self.num_columns = num_columns
        self.drop_path_rate = drop_path_rate
        self.global_drop_ratio = global_drop_ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # a scripted network draws nothing: it runs every column (see FractalBlock)
            self._draw()
        return x

    @torch.jit.unused
    def _draw(self) -> None:
        paths = self.paths
        paths.global_column, paths.local_drop_rate = None, 0.0
        if self.training:
            if self.global_drop_ratio > 0 and paths.uniform() < self.global_drop_ratio:
                paths.global_column = 1 + paths.randint(self.num_columns)
            else:
                paths.local_drop_rate = self.drop_path_rate

    def extra_repr(self) -> str:
        return f"drop_path_rate={self.drop_path_rate}, global_drop_ratio={self.global_drop_ratio}"


class FractalConv(nn.Sequential):
    """conv(z) of Sec. 2: 3x3 convolution, dropout (the block's rate), BN, ReLU."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        drop_rate: float,
        act_layer: type[nn.Module],
        norm_layer: type[nn.Module],
    ) -> None:
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False),
                drop=nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity(),
                bn=norm_layer(out_chs),
                act=act_layer(inplace=True),
            )
        )


class FractalBlock(nn.Module):
    """f_C: C columns, column k (1..C) a chain of 2^(k-1) convolutions; the columns that end at the same depth are
    joined, and the join feeds each of them."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        num_columns: int,
        paths: PathChoice,
        drop_rate: float = 0.0,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.num_columns = num_columns
        self.paths = paths  # shared with the network's sampler; a plain attribute, not a submodule

        def column(depth: int) -> nn.Sequential:
            in_widths = [in_chs] + [out_chs] * (depth - 1)
            return nn.Sequential(*[FractalConv(i, out_chs, drop_rate, act_layer, norm_layer) for i in in_widths])

        self.columns = nn.ModuleList(column(2**k) for k in range(num_columns))
        # at depth d = 1..2^(C-1), column k (0-based, spanning 2^(C-1-k) per convolution) ends a convolution,
        # its (d / span - 1)-th, wherever its span divides d
        spans = [2 ** (num_columns - 1 - k) for k in range(num_columns)]
        self.spans = spans
        self.scripted_column = 0  # eval_column for TorchScript (0: all columns); FractalNet.eval_column sets it
        self.schedule = [
            [(k, d // span - 1) for k, span in enumerate(spans) if d % span == 0] for d in range(1, spans[0] + 1)
        ]

    def join_weights(self, columns: Sequence[int]) -> list[float] | None:
        """The weights of a join of `columns` (1-based) under this mini-batch's drop-path; None: the plain mean."""
        paths = self.paths
        if not self.training or len(columns) == 1:
            return None
        if paths.global_column is not None:
            # a join the kept column does not reach only feeds columns that are dropped further on
            return [float(c == paths.global_column) for c in columns] if paths.global_column in columns else None
        if paths.local_drop_rate > 0:
            keep = [paths.uniform() >= paths.local_drop_rate for _ in columns]
            if not any(keep):
                keep[paths.randint(len(columns))] = True  # at least one input survives
            return [k / sum(keep) for k in keep]
        return None

    def forward_scripted(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` as TorchScript compiles it: the plain joins (no drop-path), depth by depth, with the
        convolutions found by unrolled loops (TorchScript indexes module lists by constants only); `eval_column` is
        the one set when the network was scripted."""
        if not self.training and self.scripted_column > 0:
            for k, column in enumerate(self.columns):
                if k == self.scripted_column - 1:
                    return column(x)
        inputs = [x for _ in range(self.num_columns)]
        for depth in range(1, self.spans[0] + 1):
            outs: list[torch.Tensor] = []
            ended: list[int] = []
            for k, column in enumerate(self.columns):
                if depth % self.spans[k] == 0:
                    for i, conv in enumerate(column):
                        if i == depth // self.spans[k] - 1:
                            outs.append(conv(inputs[k]))
                    ended.append(k)
            x = outs[0]
            for out in outs[1:]:
                x = x + out
            x = x / len(outs) if len(outs) > 1 else x  # join: the element-wise mean, as `join`
            for k in ended:
                inputs[k] = x
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.forward_scripted(x)
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.paths.eval_column is not None:
            return self.columns[self.paths.eval_column - 1](x)
        inputs = [x] * self.num_columns  # each column's input: the block's, then that of its last join
        for ending in self.schedule:
            outs = [self.columns[k][i](inputs[k]) for k, i in ending]
            x = join(outs, self.join_weights([k + 1 for k, _ in ending]))
            for k, _ in ending:
                inputs[k] = x
        return x
