"""Channel shuffle, as in Zhang, Zhou, Lin & Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural Network
for Mobile Devices", CVPR 2018 (arXiv:1707.01083), Sec. 3.1 and Fig. 1(c).

"Suppose a convolutional layer with g groups whose output has g x n channels; we first reshape the output channel
dimension into (g, n), transposing and then flattening it back as the input of the next layer." Output channel
j * g + i is input channel i * n + j: each of the next layer's g groups sees channels from every group of this
one. ShuffleNet v2 (Ma et al. 2018, Sec. 3) shuffles the concatenation of its two branches with g = 2.

timm has no channel shuffle layer. torch's `nn.ChannelShuffle` computes the same permutation (the tests check it);
this layer writes the paper's three steps out as a view and a transpose, so it reads as the paper does.
"""

import torch
import torch.nn as nn


class ChannelShuffle(nn.Module):
    """The paper's reshape (g, n) -> transpose -> flatten of the channel dimension; `groups=1` is the identity."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        if groups < 1:
            raise ValueError(f"ChannelShuffle: groups={groups} must be at least 1")
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return x
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
