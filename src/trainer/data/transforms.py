"""Training augmentation as the papers describe it, from torchvision's and timm's transforms.

One pipeline, read top-down: crop, flip, policy (AutoAugment), colour, to tensor, lighting, normalise.

Crops (`crop`):
- `random_resized`: a crop of `scale` of the area and `ratio` aspect, resized to the resolution (Szegedy et al.
  2015, Sec. 6; the common ImageNet crop);
- `scale_jitter`: the shorter side resized to an integer drawn uniformly from `jitter_sizes`, then a random square
  crop (VGG, Simonyan & Zisserman 2015, Sec. 3.1: S in [256, 512]; ResNet, He et al. 2016, Sec. 3.4: [256, 480]);
- `resize_random`: the image resized to a `resize` x `resize` square, then a random crop (AlexNet, Sec. 2 and 4.1:
  256 x 256 images, random 224 patches);
- `pad_random`: `padding` zero pixels on each side, then a random crop of the resolution (the CIFAR papers' "C10+"
  protocol: He et al. 2016, Sec. 4.2, 4 pixels on 32x32 images); `padding` is in pixels and does not scale;
- `none`: the image as it is (CIFAR's "without augmentation" columns; the images are the resolution already).
Pixel sizes (`jitter_sizes`, `resize`) are the papers' for 224-px crops and scale with the resolution (at 112 px,
[256, 512] becomes [128, 256]), so a recipe keeps its proportions on small images such as the bundled sample set.

Colour: `color_jitter` (brightness, contrast, saturation[, hue]; torchvision's ColorJitter applies them in random
order, like the Inception code's photometric distortions); `lighting_std` (AlexNet's PCA colour noise, Sec. 4.1);
`auto_augment` (a timm policy string: "original" is the AutoAugment paper's ImageNet policy, EfficientNet's
TensorFlow code used "v0").
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torchvision.transforms as T
from timm.data import auto_augment_transform, rand_augment_transform
from timm.data.transforms import str_to_interp_mode

from trainer.errors import ConfigError

CROPS = ("random_resized", "scale_jitter", "resize_random", "pad_random", "none")
PAPER_RESOLUTION = 224  # the crop the papers' pixel sizes belong to

# AlexNet's PCA lighting: eigenvalues and eigenvectors of the RGB covariance of ImageNet training pixels (values
# in [0, 1]), as published with fb.resnet.torch and used by torchvision-era reimplementations.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class Lighting:
    """AlexNet's PCA colour augmentation (Krizhevsky et al. 2012, Sec. 4.1): add to every pixel
    sum_i alpha_i lambda_i p_i, with alpha_i ~ N(0, std) drawn once per image, on a [0, 1] RGB tensor."""

    def __init__(
        self,
        std: float = 0.1,
        eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
        eigvec: Sequence[Sequence[float]] = IMAGENET_PCA_EIGVEC,
    ) -> None:
        self.std = std
        self.eigval = torch.tensor(eigval)
        self.eigvec = torch.tensor(eigvec)  # columns are the eigenvectors p_i

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return image
        alpha = torch.randn(3) * self.std
        shift = self.eigvec @ (alpha * self.eigval)  # one RGB offset for the whole image
        return image + shift.view(3, 1, 1)

    def __repr__(self) -> str:
        return f"Lighting(std={self.std})"


class ScaleJitter:
    """Resize the shorter side to a size drawn uniformly from [low, high] (integers), keeping the aspect."""

    def __init__(self, low: int, high: int, interpolation: T.InterpolationMode) -> None:
        if not 0 < low <= high:
            raise ConfigError(f"augment.jitter_sizes=[{low}, {high}] is not a range of positive sizes")
        self.low, self.high, self.interpolation = low, high, interpolation

    def __call__(self, image: Any) -> Any:
        return T.functional.resize(image, random.randint(self.low, self.high), interpolation=self.interpolation)

    def __repr__(self) -> str:
        return f"ScaleJitter({self.low}, {self.high})"


def _scaled(size: float, resolution: int) -> int:
    return max(round(size * resolution / PAPER_RESOLUTION), resolution)


def _policy(name: str, resolution: int, mean: Sequence[float]) -> Callable:
    hparams = {"translate_const": int(resolution * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}
    try:
        if name.startswith("rand"):
            return rand_augment_transform(name, hparams)
        return auto_augment_transform(name, hparams)
    except (AssertionError, KeyError, ValueError) as e:
        raise ConfigError(f"augment.auto_augment='{name}' is not a timm policy ({e})") from None


def build_train_transform(
    augment: Mapping[str, Any], *, resolution: int, mean: Sequence[float], std: Sequence[float], interpolation: str
) -> T.Compose:
    """The training pipeline an `augment` config describes (see the module docstring for the keys)."""
    crop = augment.get("crop", "random_resized")
    interp = str_to_interp_mode(interpolation)
    if crop == "random_resized":
        steps: list[Callable] = [
            T.RandomResizedCrop(
                resolution, scale=tuple(augment["scale"]), ratio=tuple(augment["ratio"]), interpolation=interp
            )
        ]
    elif crop == "scale_jitter":
        low, high = (_scaled(s, resolution) for s in augment["jitter_sizes"])
        steps = [ScaleJitter(low, high, interp), T.RandomCrop(resolution)]
    elif crop == "resize_random":
        size = _scaled(augment["resize"], resolution)
        steps = [T.Resize((size, size), interpolation=interp), T.RandomCrop(resolution)]
    elif crop == "pad_random":
        steps = [T.RandomCrop(resolution, padding=int(augment.get("padding", 4)), fill=0)]
    elif crop == "none":
        steps = []
    else:
        raise ConfigError(f"augment.crop='{crop}' is not one of {', '.join(CROPS)}")
    if augment.get("hflip"):
        steps.append(T.RandomHorizontalFlip(augment["hflip"]))
    if augment.get("auto_augment"):
        steps.append(_policy(str(augment["auto_augment"]), resolution, mean))
    jitter = augment.get("color_jitter")
    if jitter:
        jitter = [float(jitter)] * 3 if isinstance(jitter, (int, float)) else [float(j) for j in jitter]
        if len(jitter) not in (3, 4):
            raise ConfigError(f"augment.color_jitter={jitter}: give brightness, contrast, saturation[, hue]")
        steps.append(T.ColorJitter(*jitter))
    steps.append(T.ToTensor())
    if augment.get("lighting_std"):
        steps.append(Lighting(float(augment["lighting_std"])))
    steps.append(T.Normalize(mean=tuple(mean), std=tuple(std)))
    return T.Compose(steps)
