"""Training augmentation as the papers describe it, from torchvision's and timm's transforms.

One pipeline, read top-down: crop, flip, policy (AutoAugment), rotation, colour, to tensor, lighting, normalise.

Crops (`crop`):
- `random_resized`: a crop of `scale` of the area and `ratio` aspect, resized to the resolution (Szegedy et al.
  2015, Sec. 6; the common ImageNet crop);
- `scale_jitter`: the shorter side resized to an integer drawn uniformly from `jitter_sizes`, then a random square
  crop (VGG, Simonyan & Zisserman 2015, Sec. 3.1: S in [256, 512]; ResNet, He et al. 2016, Sec. 3.4: [256, 480]);
- `center_random`: the shorter side resized to `resize`, the central `resize` x `resize` square kept, then a random
  crop (AlexNet, Sec. 2: "rescaled the image such that the shorter side was of length 256, and then cropped out the
  central 256x256 patch"; Sec. 4.1: random 224 x 224 patches of those and their reflections);
- `squash_random`: the whole image resized (squashed, aspect not kept) to a `resize` x `resize` square, then a random
  crop (the common realisation of AlexNet's crop in reimplementations; not the paper's);
- `pad_random`: `padding` zero pixels on each side, then a random crop of the resolution (the CIFAR papers' "C10+"
  protocol: He et al. 2016, Sec. 4.2, 4 pixels on 32x32 images); `padding` is in pixels and does not scale;
- `none`: the image as it is (CIFAR's "without augmentation" columns; the images are the resolution already).
Pixel sizes (`jitter_sizes`, `resize`) are the papers' for 224-px crops and scale with the resolution (at 112 px,
[256, 512] becomes [128, 256]), so a recipe keeps its proportions on small images such as the bundled sample set.

Rotation: `rotation` (degrees; each image turned by an angle drawn uniformly from [-rotation, rotation] about its
centre, corners filled with black: Darknet's classifier training, YOLO9000 Sec. 3).
Colour: `color_jitter` (brightness, contrast, saturation[, hue]; each a number v, the factor range [1 - v, 1 + v]
(hue: [-v, v]), or a [min, max] pair; torchvision's ColorJitter applies them in random order, like the Inception
code's photometric distortions); `lighting_std` (AlexNet's PCA colour noise, Sec. 4.1);
`auto_augment` (a timm policy string: "original" is the AutoAugment paper's ImageNet policy, EfficientNet's
TensorFlow code used "v0").
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torchvision.transforms as T
from PIL import Image, ImageOps
from timm.data import auto_augment_transform, rand_augment_transform
from timm.data.transforms import str_to_interp_mode

from trainer.errors import ConfigError

CROPS = ("random_resized", "scale_jitter", "center_random", "squash_random", "pad_random", "none")
# conf/augment/imagenet.yaml's crop and flip (Szegedy et al. 2015, Sec. 6): a data module built without an
# `augment` config trains with these (a test checks they stay the YAML's)
IMAGENET_AUGMENT = {"crop": "random_resized", "scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3), "hflip": 0.5}
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


def rotation_degrees(value: Any) -> float:
    """`augment.rotation`: the largest angle, in degrees, of the random rotation."""
    degrees = float(value)
    if not 0.0 <= degrees <= 180.0:
        raise ConfigError(f"augment.rotation={value} is not an angle in [0, 180] degrees")
    return degrees


def jitter_values(jitter: Any) -> list[float | tuple[float, float]]:
    """`augment.color_jitter` as ColorJitter's arguments: one number (brightness, contrast, saturation), or 3-4
    entries, each a number or a [min, max] pair."""
    values = [jitter] * 3 if isinstance(jitter, (int, float)) else list(jitter)
    if len(values) not in (3, 4):
        raise ConfigError(f"augment.color_jitter={values}: give brightness, contrast, saturation[, hue]")
    out: list[float | tuple[float, float]] = []
    for value in values:
        if isinstance(value, (int, float)):
            out.append(float(value))
        elif len(value) == 2 and float(value[0]) <= float(value[1]):
            out.append((float(value[0]), float(value[1])))
        else:
            raise ConfigError(f"augment.color_jitter={values}: each entry is a number or a [min, max] pair")
    return out


def _scaled(size: float, resolution: int) -> int:
    return max(round(size * resolution / PAPER_RESOLUTION), resolution)


# Policies the project's configs and recipes name (conf/augment/, recipes/); each is tested on both loaders.
POLICIES = ("original", "v0", "rand-m9-mstd0.5")


def posterize(image: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """Keep the `bits_to_keep` most significant bits of each channel; 0 bits gives a black image.

    Why not timm's: its `posterize` hands the bit count straight to PIL's ImageOps.posterize, and TensorFlow's level
    arithmetic, which timm copies ("keep 0 up to 4 MSB"), maps levels below 2.5 to 0 bits: the v0 policy's
    ('Posterize', 0.8, 2) always does, and RandAugment's increasing variant at high magnitudes. Pillow 13 rejects
    0 ("bits must be between or equal to 1 and 8"); older Pillow built a mask of 0, a black image, which is what
    TensorFlow's bit shift gives too, and what the batched path (torchvision's posterize) gives. That reading is kept.
    """
    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)  # every bit cleared
    return ImageOps.posterize(image, bits_to_keep)


def _ops(transform: Any) -> list[Any]:
    """The AugmentOps of a timm AutoAugment (a list of sub-policies) or RandAugment (a list of ops)."""
    if hasattr(transform, "policy"):
        return [op for sub_policy in transform.policy for op in sub_policy]
    return list(getattr(transform, "ops", []))


def _policy(name: str, resolution: int, mean: Sequence[float]) -> Callable:
    hparams = {"translate_const": int(resolution * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}
    try:
        transform = (
            rand_augment_transform(name, hparams) if name.startswith("rand") else auto_augment_transform(name, hparams)
        )
    except (AssertionError, KeyError, ValueError) as e:
        raise ConfigError(f"augment.auto_augment='{name}' is not a timm policy ({e})") from None
    for op in _ops(transform):
        if op.name.startswith("Posterize"):  # Posterize, PosterizeIncreasing, PosterizeOriginal: see posterize()
            op.aug_fn = posterize
    return transform


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
    elif crop == "center_random":
        size = _scaled(augment["resize"], resolution)
        steps = [T.Resize(size, interpolation=interp), T.CenterCrop(size), T.RandomCrop(resolution)]
    elif crop == "squash_random":
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
    if augment.get("rotation"):
        steps.append(T.RandomRotation(rotation_degrees(augment["rotation"]), interpolation=interp, fill=0))
    jitter = augment.get("color_jitter")
    if jitter:
        steps.append(T.ColorJitter(*jitter_values(jitter)))
    steps.append(T.ToTensor())
    if augment.get("lighting_std"):
        steps.append(Lighting(float(augment["lighting_std"])))
    steps.append(T.Normalize(mean=tuple(mean), std=tuple(std)))
    return T.Compose(steps)
