"""Evaluation protocols: which views of each image a model sees at test time, and how their scores are combined.

- `center`: one centre crop at the model's crop ratio (the training-time validation).
- `ten_crop`: the four corner and the centre crops and their mirrors (AlexNet Sec. 4.1; ResNet's "10-crop testing");
  the 10 softmax outputs are averaged.
- `multi_scale`: the fully-convolutional network on the whole image at several shorter sides and their mirrors,
  softmax averaged over scales and flips (ResNet Sec. 3.4: {224, 256, 384, 480, 640}; VGG Sec. 3.2/4.2:
  {256, 384, 512}).
- `googlenet_144`: GoogLeNet's (Sec. 7) 4 shorter sides {256, 288, 320, 352} x 3 squares x 6 crops x 2 mirrors.

Scales are the papers' pixel sizes for a 224 px network; they are multiplied by `resolution / 224`, so a model
trained at 32 px (the bundled sample set) is evaluated at {32, 37, 55, 69, 91} for ResNet's set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import v2 as T
from torchvision.transforms.functional import InterpolationMode

from trainer.errors import ConfigError
from trainer.eval.views import googlenet_crops, ten_crop

PROTOCOLS = ("center", "ten_crop", "multi_scale", "googlenet_144")
REFERENCE_RESOLUTION = 224  # the papers' scales are for this input size
RESNET_SCALES = (224, 256, 384, 480, 640)
VGG_SCALES = (256, 384, 512)
GOOGLENET_SCALES = (256, 288, 320, 352)


@dataclass(frozen=True)
class Protocol:
    """One protocol at one model resolution; `scales` are at the 224 px reference and scaled on use."""

    name: str
    resolution: int
    crop_ratio: float
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    scales: tuple[int, ...] = ()
    flips: bool = True  # mirrored views too; false where training never flipped (augment.hflip of 0)

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ConfigError(f"eval.protocol='{self.name}' is not one of {', '.join(PROTOCOLS)}")
        if not self.scales:
            default = {"multi_scale": RESNET_SCALES, "googlenet_144": GOOGLENET_SCALES}.get(self.name, ())
            object.__setattr__(self, "scales", tuple(default))
        if any(int(s) <= 0 for s in self.scales):
            raise ConfigError(f"eval.scales must be positive pixel sizes, got {list(self.scales)}")

    @property
    def pixel_scales(self) -> list[int]:
        """The shorter sides actually used: the reference scales times resolution / 224."""
        return [max(1, round(s * self.resolution / REFERENCE_RESOLUTION)) for s in self.scales]

    @property
    def views_per_image(self) -> int:
        mirrors = 2 if self.flips else 1
        return {
            "center": 1,
            "ten_crop": 5 * mirrors,
            "multi_scale": mirrors * len(self.scales),
            "googlenet_144": 18 * mirrors * len(self.scales),
        }[self.name]

    @property
    def smallest_input(self) -> int:
        """The smallest side of any view the network is given."""
        return min(self.pixel_scales) if self.name == "multi_scale" else self.resolution

    def _resize(self, size: int) -> Callable:
        return T.Resize(size, interpolation=InterpolationMode(self.interpolation), antialias=True)

    def _to_tensor(self) -> Callable:
        return T.Compose([T.PILToTensor(), T.ToDtype(torch.float32, scale=True), T.Normalize(self.mean, self.std)])

    def transform(self) -> Callable[[Any], torch.Tensor | list[torch.Tensor]]:
        """PIL image -> (V, C, res, res) views; for multi_scale, one whole image per scale (their sizes differ).
        (`center` is the data module's own validation transform, so it is not built here.)"""
        to_tensor = self._to_tensor()
        if self.name == "ten_crop":
            resize = self._resize(math.floor(self.resolution / self.crop_ratio))
            return lambda image: ten_crop(to_tensor(resize(image)), self.resolution, self.flips)
        resizes = [self._resize(s) for s in self.pixel_scales]
        if self.name == "googlenet_144":
            return lambda image: torch.cat(
                [googlenet_crops(to_tensor(r(image)), self.resolution, self.flips) for r in resizes]
            )
        if self.name == "multi_scale":
            return lambda image: [to_tensor(r(image)) for r in resizes]
        raise ValueError(f"protocol '{self.name}' uses the data module's validation transform")


def collate_views(batch: Sequence[tuple[Any, int] | None]) -> tuple[Any, torch.Tensor] | None:
    """Stack images (or view stacks) where they share a shape; multi_scale's per-scale lists stay lists."""
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        return None
    images = [image for image, _ in kept]
    targets = torch.tensor([target for _, target in kept])
    if isinstance(images[0], list):
        return [list(per_scale) for per_scale in zip(*images, strict=True)], targets
    return torch.stack(images), targets


def _forward_in_chunks(model: nn.Module, x: torch.Tensor, chunk: int | None) -> torch.Tensor:
    chunk = chunk or len(x)
    return torch.cat([model(part) for part in x.split(chunk)])


def score_views(model: nn.Module, views: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """(B, V, C, H, W) views -> (B, classes) softmax averaged over the V views, all views in one batched forward
    (in chunks of `chunk` views at most)."""
    batch, num_views = views.shape[:2]
    logits = _forward_in_chunks(model, views.flatten(0, 1), chunk).float()
    return logits.softmax(-1).reshape(batch, num_views, -1).mean(1)


def score_scales(
    model: nn.Module, scales: Sequence[Sequence[torch.Tensor]], chunk: int | None = None, flips: bool = True
) -> torch.Tensor:
    """Per scale a list of B whole images (C, H_i, W_i) -> (B, classes): softmax of each image and its mirror (with
    `flips`) at every scale, averaged. Images of one shape go through the network together."""
    mirrors = 2 if flips else 1
    total: torch.Tensor | None = None
    for images in scales:
        shapes: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            shapes.setdefault(tuple(image.shape), []).append(index)
        for indices in shapes.values():
            x = torch.stack([images[i] for i in indices])
            x = torch.cat([x, x.flip(-1)]) if flips else x
            probs = _forward_in_chunks(model, x, chunk).float().softmax(-1)
            probs = probs.reshape(mirrors, len(indices), -1).sum(0)
            if total is None:
                total = probs.new_zeros(len(images), probs.shape[-1])
            total[indices] += probs
    assert total is not None
    return total / (mirrors * len(scales))


def predict(
    protocol: str, model: nn.Module, images: Any, chunk: int | None = None, flips: bool = True
) -> tuple[torch.Tensor, bool]:
    """Scores of a batch under `protocol`: (logits, False) for one centre crop, (probabilities, True) otherwise."""
    if protocol == "center":
        return model(images).float(), False
    if protocol == "multi_scale":
        return score_scales(model, images, chunk, flips), True
    return score_views(model, images, chunk), True


def losses_of(scores: torch.Tensor, is_prob: bool, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per image: of the logits, or of the averaged probabilities."""
    if is_prob:
        return F.nll_loss(scores.clamp_min(1e-12).log(), targets, reduction="none")
    return F.cross_entropy(scores, targets, reduction="none")
