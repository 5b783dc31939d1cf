"""Training augmentations as batched tensor ops on the training device: what the FFCV loader's decoders do not do.

The folder loader applies the recipes' augmentations to each PIL image in its workers (trainer.data.transforms).
An FFCV pipeline decodes, crops and flips in compiled code and hands over a uint8 batch; `BatchAugment` does the rest
on that batch, wherever it lives (the GPU in training), in the folder pipeline's order:

    AutoAugment / RandAugment (uint8)  ->  to [0, 1]  ->  rotation  ->  colour jitter  ->  PCA lighting  ->  normalise

Randomness is per sample, as in the papers and in the folder pipeline: each image draws its own AutoAugment
sub-policy (with its own application coins, signs and magnitudes), its own jitter factors and order, and its own
lighting offset. Samples that drew the same operation with the same arguments are transformed together in one call,
so a batch costs a few dozen kernel launches, not one pipeline per image.

Differences from the PIL pipeline, all below the noise of the augmentation itself: geometric AutoAugment ops use
bilinear sampling (timm picks bilinear or bicubic at random), and colour ops round like torchvision's tensor ops,
not like PIL's ImageEnhance. The policy objects and their level arithmetic are timm's own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from timm.data.auto_augment import AutoAugment, RandAugment
from torchvision.transforms import InterpolationMode

from trainer.data.transforms import IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC, _policy, jitter_values, rotation_degrees
from trainer.errors import ConfigError

__all__ = ["BatchAugment", "needs_batch_augment", "rotate"]

_LEVEL_DENOM = 10.0  # timm's magnitude scale


def needs_batch_augment(augment: Mapping[str, Any]) -> bool:
    """Whether `augment` asks for anything an FFCV decoder does not do (AutoAugment, rotation, colour jitter,
    lighting)."""
    keys = ("auto_augment", "rotation", "color_jitter", "lighting_std")
    return any(augment.get(key) for key in keys)


def _jitter_ranges(jitter: Any) -> list[tuple[float, float] | None]:
    """torchvision ColorJitter's ranges for (brightness, contrast, saturation, hue); None where switched off."""
    values = jitter_values(jitter)
    values += [0.0] * (4 - len(values))
    ranges: list[tuple[float, float] | None] = []
    for v in values[:3]:  # torchvision's: v -> [max(0, 1 - v), 1 + v]; a pair as given; (1, 1) is off
        low, high = v if isinstance(v, tuple) else (max(0.0, 1.0 - v), 1.0 + v)
        ranges.append(None if low == high == 1.0 or (not isinstance(v, tuple) and v <= 0) else (low, high))
    hue = values[3]
    low, high = hue if isinstance(hue, tuple) else (-hue, hue)
    if not -0.5 <= low <= high <= 0.5:
        raise ConfigError(f"augment.color_jitter hue={hue} is not in [-0.5, 0.5]")
    ranges.append(None if low == high == 0.0 else (low, high))
    return ranges


# -- uint8 AutoAugment operations on (n, 3, H, W) ----------------------------------------------------------------


def _pil_affine(images: torch.Tensor, matrix: Sequence[float], fill: Sequence[int]) -> torch.Tensor:
    """PIL's Image.transform(AFFINE, (a, b, c, d, e, f)): output pixel (x, y) samples the input at
    (a x + b y + c, d x + e y + f), pixel centres; outside the image, `fill`. Bilinear."""
    n, c, h, w = images.shape
    a, b, cc, d, e, f = (float(v) for v in matrix)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=images.device, dtype=torch.float32) + 0.5,
        torch.arange(w, device=images.device, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    grid = torch.stack((2 * (a * xs + b * ys + cc) / w - 1, 2 * (d * xs + e * ys + f) / h - 1), dim=-1)
    ones = torch.ones(n, 1, h, w, device=images.device)
    sampled = F.grid_sample(
        torch.cat((images.float(), ones), 1), grid.expand(n, h, w, 2), mode="bilinear", align_corners=False
    )
    inside = sampled[:, c:]
    fill_t = torch.tensor(fill, dtype=torch.float32, device=images.device).view(1, c, 1, 1)
    return (sampled[:, :c] + (1 - inside) * fill_t).round_().clamp_(0, 255).to(torch.uint8)


def _gaussian_blur(images: torch.Tensor, radius: float) -> torch.Tensor:
    if radius <= 0:
        return images
    kernel = 2 * math.ceil(3 * radius) + 1
    return TF.gaussian_blur(images, kernel_size=[kernel, kernel], sigma=[radius, radius])


def _apply_op(name: str, images: torch.Tensor, args: tuple, fill: Sequence[int]) -> torch.Tensor:
    """timm's AutoAugment operation `name` (its PIL semantics) on a uint8 batch, with timm's level arguments."""
    h, w = images.shape[-2:]
    if name == "AutoContrast":
        return TF.autocontrast(images)
    if name == "Equalize":
        return TF.equalize(images)
    if name == "Invert":
        return TF.invert(images)
    if name == "Rotate":
        return TF.rotate(images, angle=args[0], interpolation=InterpolationMode.BILINEAR, fill=list(fill))
    if name.startswith("Posterize"):
        bits = int(args[0])
        return images if bits >= 8 else TF.posterize(images, max(bits, 0))
    if name.startswith("Solarize") and name != "SolarizeAdd":
        return torch.where(images >= args[0], 255 - images, images)  # PIL: invert pixels >= threshold
    if name == "SolarizeAdd":
        added = (images.to(torch.int16) + int(args[0])).clamp_(max=255).to(torch.uint8)
        return torch.where(images < 128, added, images)
    if name.startswith("Color"):
        return TF.adjust_saturation(images, args[0])
    if name.startswith("Contrast"):
        return TF.adjust_contrast(images, args[0])
    if name.startswith("Brightness"):
        return TF.adjust_brightness(images, args[0])
    if name.startswith("Sharpness"):
        return TF.adjust_sharpness(images, args[0])
    if name == "ShearX":
        return _pil_affine(images, (1, args[0], 0, 0, 1, 0), fill)
    if name == "ShearY":
        return _pil_affine(images, (1, 0, 0, args[0], 1, 0), fill)
    if name == "TranslateX":
        return _pil_affine(images, (1, 0, args[0], 0, 1, 0), fill)
    if name == "TranslateY":
        return _pil_affine(images, (1, 0, 0, 0, 1, args[0]), fill)
    if name == "TranslateXRel":
        return _pil_affine(images, (1, 0, args[0] * w, 0, 1, 0), fill)
    if name == "TranslateYRel":
        return _pil_affine(images, (1, 0, 0, 0, 1, args[0] * h), fill)
    if name == "Desaturate":
        return TF.adjust_saturation(images, min(1.0, max(0.0, 1.0 - args[0])))
    if name in ("GaussianBlur", "GaussianBlurRand"):
        return _gaussian_blur(images, float(args[0]))
    raise ConfigError(f"AutoAugment operation '{name}' has no batched form (trainer.data.batch_augment)")


def _draw_args(op: Any) -> tuple[str, tuple, tuple] | None:
    """One draw of timm's AugmentOp.__call__ without the image: None when the op is not applied, else its name,
    level arguments (random sign and magnitude noise included) and fill colour."""
    if op.prob < 1.0 and random.random() > op.prob:
        return None
    magnitude = op.magnitude
    if op.magnitude_std > 0:
        if op.magnitude_std == float("inf"):
            magnitude = random.uniform(0, magnitude)
        else:
            magnitude = random.gauss(magnitude, op.magnitude_std)
    magnitude = max(0.0, min(magnitude, op.magnitude_max or _LEVEL_DENOM))
    args = tuple(op.level_fn(magnitude, op.hparams)) if op.level_fn is not None else ()
    if op.name == "GaussianBlurRand":  # timm draws the radius inside the op
        args = (random.uniform(0.1, 2.0 * args[0]),)
    return op.name, args, tuple(op.kwargs.get("fillcolor", (128, 128, 128)))


# -- float colour operations with one factor per sample ---------------------------------------------------------


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)  # torchvision's weights


def _rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(dim=-3)
    maxc, minc = images.amax(dim=-3), images.amin(dim=-3)
    same = maxc == minc
    delta = maxc - minc
    ones = torch.ones_like(maxc)
    s = delta / torch.where(same, ones, maxc)
    divisor = torch.where(same, ones, delta)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    h = (maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    h = h + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    return torch.stack((torch.fmod(h / 6.0 + 1.0, 1.0), s, maxc), dim=-3)


def _hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    h, s, v = images.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    mask = (i.unsqueeze(-3) == torch.arange(6, device=i.device).view(-1, 1, 1)).to(images.dtype)
    channels = torch.stack(
        (torch.stack((v, q, p, p, t, v), -3), torch.stack((t, v, v, q, p, p), -3), torch.stack((p, p, t, v, v, q), -3)),
        -4,
    )
    return torch.einsum("...ijk,...xijk->...xjk", mask, channels)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * images + (1.0 - factor) * other).clamp_(0.0, 1.0)


def _jitter(kind: int, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness / contrast / saturation / hue on [0, 1] floats, one factor per sample."""
    factor = factor.view(-1, 1, 1, 1)
    if kind == 0:
        return (images * factor).clamp_(0.0, 1.0)
    if kind == 1:
        return _blend(images, _grayscale(images).mean(dim=(-3, -2, -1), keepdim=True), factor)
    if kind == 2:
        return _blend(images, _grayscale(images), factor)
    hsv = _rgb_to_hsv(images)
    hue = torch.remainder(hsv[:, :1] + factor, 1.0)
    return _hsv_to_rgb(torch.cat((hue, hsv[:, 1:]), 1))


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """torchvision's rotate on (n, c, h, w) floats, one angle per sample (degrees, counter-clockwise) about the image
    centre: bilinear, black outside the image, the output the input's size."""
    n, c, h, w = images.shape
    angle = degrees.to(images.device, torch.float32) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    # where each output pixel samples the input, in normalised coordinates (x across w, y down h): the inverse
    # rotation, with the aspect ratio undone so that the turn is a rotation in pixels
    theta = torch.stack((torch.stack((cos, -sin * h / w, zero), 1), torch.stack((sin * w / h, cos, zero), 1)), 1)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class BatchAugment(nn.Module):
    """The augmentations of `augment` that FFCV's decoders lack, on a uint8 (n, 3, H, W) batch, then normalisation;
    returns `dtype`. `augment` is the training augmentation config (`auto_augment`, `rotation`, `color_jitter`,
    `lighting_std`; crops and flips are the decoders')."""

    def __init__(
        self,
        augment: Mapping[str, Any],
        *,
        resolution: int,
        mean: Sequence[float],
        std: Sequence[float],
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        name = augment.get("auto_augment")
        self.policy = _policy(str(name), int(resolution), mean) if name else None
        if self.policy is not None and not isinstance(self.policy, (AutoAugment, RandAugment)):
            raise ConfigError(f"augment.auto_augment='{name}' has no batched form (AutoAugment or RandAugment only)")
        self.rotation = rotation_degrees(augment.get("rotation") or 0.0)
        jitter = augment.get("color_jitter")
        self.jitter = _jitter_ranges(jitter) if jitter else None
        self.lighting_std = float(augment.get("lighting_std") or 0.0)
        self.dtype = dtype
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("eigval", torch.tensor(IMAGENET_PCA_EIGVAL), persistent=False)
        self.register_buffer("eigvec", torch.tensor(IMAGENET_PCA_EIGVEC), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"policy={type(self.policy).__name__ if self.policy else None}, rotation={self.rotation}, "
            + (f"jitter={self.jitter}, ")
            + (f"lighting_std={self.lighting_std}, dtype={self.dtype}")
        )

    # AutoAugment: a program per sample, run step by step with the samples grouped by (op, arguments).

    def _programs(self, n: int) -> list[list[tuple[str, tuple, tuple] | None]]:
        programs = []
        for _ in range(n):
            if isinstance(self.policy, AutoAugment):
                ops = random.choice(self.policy.policy)
            else:
                ops = np.random.choice(
                    self.policy.ops,
                    self.policy.num_layers,
                    replace=self.policy.choice_weights is None,
                    p=self.policy.choice_weights,
                )
            programs.append([_draw_args(op) for op in ops])
        return programs

    def auto_augment(self, images: torch.Tensor) -> torch.Tensor:
        programs = self._programs(images.shape[0])
        out = images.clone(memory_format=torch.contiguous_format)
        for step in range(max((len(p) for p in programs), default=0)):
            groups: dict[tuple, list[int]] = {}
            for index, program in enumerate(programs):
                if step < len(program) and program[step] is not None:
                    groups.setdefault(program[step], []).append(index)
            for (name, args, fill), members in groups.items():
                rows = torch.tensor(members, device=images.device)
                out[rows] = _apply_op(name, out[rows], args, fill)
        return out

    def rotate(self, images: torch.Tensor) -> torch.Tensor:
        """torchvision's RandomRotation per sample: an angle uniform in [-rotation, rotation] degrees."""
        angles = torch.empty(images.shape[0], device=images.device).uniform_(-self.rotation, self.rotation)
        return rotate(images, angles)

    def color_jitter(self, images: torch.Tensor) -> torch.Tensor:
        n, device = images.shape[0], images.device
        order = torch.argsort(torch.rand(n, 4, device=device), dim=1)  # torchvision: a random order per call
        factors = [None if r is None else torch.empty(n, device=device).uniform_(r[0], r[1]) for r in self.jitter or []]
        for position in range(4):
            for kind, factor in enumerate(factors):
                if factor is None:
                    continue
                rows = torch.nonzero(order[:, position] == kind).flatten()
                if rows.numel():
                    images[rows] = _jitter(kind, images[rows], factor[rows])
        return images

    def lighting(self, images: torch.Tensor) -> torch.Tensor:
        # AlexNet Sec. 4.1, as trainer.data.transforms.Lighting, one alpha ~ N(0, std) triple per image
        alpha = torch.randn(images.shape[0], 3, device=images.device) * self.lighting_std
        shift = (alpha * self.eigval) @ self.eigvec.T
        return images + shift.view(-1, 3, 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"BatchAugment expects uint8 images, got {images.dtype}")
        if self.policy is not None:
            images = self.auto_augment(images)
        x = images.float().div_(255)  # ToTensor
        if self.rotation:
            x = self.rotate(x)
        if self.jitter is not None:
            x = self.color_jitter(x)
        if self.lighting_std:
            x = self.lighting(x)
        return x.sub_(self.mean).div_(self.std).to(self.dtype)  # Normalize
