"""Test-time views of one image: the crops and flips each evaluation protocol averages over.

Every function takes an image tensor (C, H, W), already resized and normalised, and returns a stack of views
(V, C, size, size), so a batch of images becomes (B, V, C, size, size) and is scored in one forward pass.
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF


def corner_and_center_crops(image: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Top-left, top-right, bottom-left, bottom-right and centre crops of `size` x `size`."""
    *corners, _ = TF.five_crop(image, [size, size])
    # the centre by hand: five_crop's rounds half to even, a pixel past ours (and three_squares') at margins of 3 mod 4
    height, width = image.shape[-2:]
    return [*corners, TF.crop(image, (height - size) // 2, (width - size) // 2, size, size)]


def with_flips(views: list[torch.Tensor], flips: bool = True) -> torch.Tensor:
    """The views followed by their horizontal mirror images, stacked: (2V, C, H, W); (V, C, H, W) without `flips`
    (data that never flips in training, where a mirrored view is an image the network never saw)."""
    stacked = torch.stack(views)
    # not torchvision's ten_crop: it crops the mirrored image, so its mirrors come in another order and, for an odd
    # margin, its mirrored centre is not the centre's mirror
    return torch.cat([stacked, stacked.flip(-1)]) if flips else stacked


def ten_crop(image: torch.Tensor, size: int, flips: bool = True) -> torch.Tensor:
    """AlexNet's (Sec. 4.1) and ResNet's 10 views: the four corners and the centre, and their mirror images."""
    return with_flips(corner_and_center_crops(image, size), flips)


def three_squares(image: torch.Tensor) -> list[torch.Tensor]:
    """Left, centre and right squares of a landscape image (top, centre, bottom of a portrait one)."""
    height, width = image.shape[-2:]
    side = min(height, width)
    if width >= height:
        starts = (0, (width - side) // 2, width - side)
        return [image[..., :, s : s + side] for s in starts]
    starts = (0, (height - side) // 2, height - side)
    return [image[..., s : s + side, :] for s in starts]


def googlenet_crops(image: torch.Tensor, size: int, flips: bool = True) -> torch.Tensor:
    """GoogLeNet's (Szegedy et al. 2015, Sec. 7) 18 crops of one scale with their mirrors, 36 views: of each of the
    three squares, the four corner and the centre `size` crops and the square resized to `size`."""
    views: list[torch.Tensor] = []
    for square in three_squares(image):
        views += corner_and_center_crops(square, size)
        views.append(torch.nn.functional.interpolate(square[None], size=(size, size), mode="bilinear")[0])
    return with_flips(views, flips)
