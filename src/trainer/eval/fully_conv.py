"""Dense (fully-convolutional) evaluation: a network applied to a whole image larger than its training crop.

VGG (Simonyan & Zisserman 2015, Sec. 3.2): "the fully-connected layers are first converted to convolutional layers
(the first FC layer to a 7x7 conv. layer, the last two FC layers to 1x1 conv. layers)"; the class score map is then
averaged over space. Networks that end in global average pooling and one linear classifier are fully convolutional
already (the average of the pooled features, classified, is the average of the score map), and timm's VGG holds its
fc6/fc7 as convolutions (ConvMlp). AlexNet's head, an adaptive pooling to 6x6 followed by Linear fc6/fc7/fc8, is
converted here: fc6 becomes a 6x6 convolution over pool5, fc7 and fc8 become 1x1 convolutions.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _as_conv(linear: nn.Linear, in_channels: int, kernel: tuple[int, int]) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, linear.out_features, kernel, bias=linear.bias is not None)
    conv = conv.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        # nn.Flatten orders the inputs (channel, row, column): the same order as a conv weight's (C, kh, kw)
        conv.weight.copy_(linear.weight.reshape(linear.out_features, in_channels, *kernel))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def fc_head_grid(model: nn.Module) -> tuple[int, int] | None:
    """(h, w) of the adaptive pooling in front of a flatten-and-Linear head (AlexNet: 6x6), or None when the model
    needs no conversion (global pooling, or convolutional fc layers already)."""
    pool = getattr(model, "global_pool", None)
    pre_logits = getattr(model, "pre_logits", None)
    if not isinstance(pool, nn.AdaptiveAvgPool2d) or not isinstance(pre_logits, nn.Sequential):
        return None
    size = pool.output_size
    grid = (size, size) if isinstance(size, int) else tuple(size)
    if grid == (1, 1) or not any(isinstance(m, nn.Flatten) for m in pre_logits):
        return None
    return grid  # type: ignore[return-value]


class FullyConvolutional(nn.Module):
    """`model` with its fully-connected head as convolutions; returns the class scores averaged over the score map.

    At the native input size (pool5 exactly the pooling grid) it computes what `model` computes.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        grid = fc_head_grid(model)
        if grid is None:
            raise ValueError(f"{type(model).__name__} has no flatten-and-Linear head to convert")
        self.model, self.grid = model, grid
        layers: list[nn.Module] = []
        channels, first = int(model.num_features), True
        for layer in model.pre_logits:
            if isinstance(layer, nn.Flatten):
                continue
            if isinstance(layer, nn.Linear):
                layers.append(_as_conv(layer, channels, grid if first else (1, 1)))
                channels, first = layer.out_features, False
            else:  # activations and dropout act elementwise on a map as on a vector
                layers.append(layer)
        fc = model.get_classifier()
        if isinstance(fc, nn.Linear):
            layers.append(_as_conv(fc, channels, (1, 1)))
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)
        if features.shape[-2] < self.grid[0] or features.shape[-1] < self.grid[1]:
            features = F.adaptive_avg_pool2d(features, self.grid)  # as the model does below its native size
        return self.head(features).mean(dim=(-2, -1))


def fully_convolutional(model: nn.Module) -> nn.Module:
    """`model` ready for inputs of any size at or above its minimum: converted where its head is fully connected."""
    return FullyConvolutional(model) if fc_head_grid(model) is not None else model
