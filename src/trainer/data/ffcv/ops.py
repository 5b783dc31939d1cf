"""The pieces of the FFCV pipelines that ffcv 1.0.2 lacks or gets wrong for this project (imports ffcv; the data
module imports this module only once ffcv is known to import).

- `ExactNormalize`: ffcv's NormalizeImage (a per-channel lookup table, on the CPU) with a table computed exactly as
  torchvision's ToTensor + Normalize compute it in float32, so the FFCV and folder loaders give bit-identical
  inputs for identical pixels.
- `DeviceNormalize`: uint8 -> normalised float16 / bfloat16 / float32 on the training device, in torch (ffcv's
  NormalizeImage needs cupy on the GPU, and knows no bfloat16); the output is channels-last.
- `ScaleJitterRGBImageDecoder`, `CenterRandomCropRGBImageDecoder`, `SquashRandomCropRGBImageDecoder`: the recipes'
  `scale_jitter` (VGG, ResNet), `center_random` (AlexNet) and `squash_random` crops as ffcv decoders: the crop the
  folder loader takes, located in the stored image and resized once; `train_decoder()` picks the recipe's.
- Seeded augmentation: ffcv's random crops and flips draw from numba's generator, one per thread, never seeded.
  The training decoders here (`SeededRandomResizedCropRGBImageDecoder` and the crop decoders above) seed it before each
  image's crop and flip with a function of (`seed`, epoch, the image's index in the file), as the folder loader
  seeds each sample (data/samplers.py); the flip is drawn in the decoder (ffcv's RandomHorizontalFlip draws a whole
  batch outside its threads). Issue 21 asks for (seed, epoch, rank, batch index); the image's index is the
  stricter reading: the same image gets the same crop in an epoch whatever the rank, the batch it lands in, the
  thread count or the batches skipped on resume. The epoch's seed is read by the compiled pipeline when it runs
  (from a one-element array the decoder owns, through `_address_as_pointer`), so a new epoch needs no new
  compile; the training pipeline is compiled again only when its buffers change (a new output size: progressive
  resizing).

The loader itself is trainer.data.ffcv.loader's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from ffcv.fields.rgb_image import ResizedCropRGBImageDecoder, SimpleRGBImageDecoder
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State
from ffcv.transforms import NormalizeImage
from numba import carray, types
from numba.extending import intrinsic

from trainer.compat import FFCV_IMAGE_MODES, ffcv_get_random_crop, ffcv_imdecode, ffcv_resize_crop
from trainer.data.transforms import CROPS, _scaled
from trainer.errors import ConfigError

__all__ = [
    "CenterRandomCropRGBImageDecoder",
    "DeviceNormalize",
    "ExactNormalize",
    "ScaleJitterRGBImageDecoder",
    "SeededRandomResizedCropRGBImageDecoder",
    "SquashRandomCropRGBImageDecoder",
    "epoch_seed",
    "train_decoder",
]


def torchvision_table(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(256, 3) float32: what ToTensor + Normalize give for each uint8 value of each channel, computed the way they
    compute it (x.float().div(255), then sub(mean).div(std) in float32)."""
    values = torch.arange(256, dtype=torch.uint8).float().div(255)[:, None]
    table = values.sub(torch.tensor(mean, dtype=torch.float32)).div(torch.tensor(std, dtype=torch.float32))
    return table.numpy()


class ExactNormalize(NormalizeImage):
    """ffcv's CPU NormalizeImage with torchvision's exact float32 values (on HWC uint8 images, before ToTensor)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(np.array(mean) * 255, np.array(std) * 255, np.float32)
        self.lookup_table = torchvision_table(mean, std)


class DeviceNormalize(Operation):
    """uint8 NCHW images on the device -> ((x / 255) - mean) / std in `dtype`, written channels-last into ffcv's
    preallocated buffer (safe across ffcv's CUDA streams)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype) -> None:
        super().__init__()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.dtype = dtype
        self.device = torch.device("cpu")

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        self.device = previous_state.device
        state = replace(previous_state, dtype=self.dtype, jit_mode=False)
        return state, AllocationQuery(previous_state.shape, dtype=self.dtype, device=previous_state.device)

    def generate_code(self) -> Callable:
        mean, std = self.mean.to(self.device), self.std.to(self.device)

        def normalize(images: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
            n, c, h, w = images.shape
            out = dst.view(dst.shape[0], h, w, c).permute(0, 3, 1, 2)[:n]  # channels-last view of the buffer
            out.copy_(images.float().div_(255).sub_(mean).div_(std))
            return out

        return normalize


def _scale_jitter_crop(height, width, sizes, resolution):  # numba-compiled by ffcv
    # The folder loader's ScaleJitter + RandomCrop: shorter side resized to S in [low, high], a random
    # resolution x resolution crop; the same crop in the stored image is a square of side shorter * resolution / S.
    short = min(height, width)
    s = np.random.randint(int(sizes[0]), int(sizes[1]) + 1)
    side = int(np.round(resolution[0] * short / s))
    side = max(1, min(side, short))
    i = np.random.randint(0, height - side + 1)
    j = np.random.randint(0, width - side + 1)
    return i, j, side, side


def _center_random_crop(height, width, fraction, _):  # numba-compiled by ffcv
    # The folder loader's Resize(size) + CenterCrop(size) + RandomCrop(resolution): the central square of the shorter
    # side, and a random square of fraction = resolution / size of its side inside it.
    short = min(height, width)
    side = max(1, min(int(np.round(short * fraction[0])), short))
    i = (height - short) // 2 + np.random.randint(0, short - side + 1)
    j = (width - short) // 2 + np.random.randint(0, short - side + 1)
    return i, j, side, side


def _squash_random_crop(height, width, fraction, _):  # numba-compiled by ffcv
    # The folder loader's Resize((size, size)) + RandomCrop(resolution): fraction = resolution / size of each side.
    h = max(1, min(int(np.round(height * fraction[0])), height))
    w = max(1, min(int(np.round(width * fraction[0])), width))
    i = np.random.randint(0, height - h + 1)
    j = np.random.randint(0, width - w + 1)
    return i, j, h, w


_SEED_MOD = 2147483647  # numba's np.random.seed takes a 32-bit seed; a prime modulus spreads image indices


def epoch_seed(seed: int, epoch: int) -> int:
    """The 31-bit seed of one epoch's training augmentation (the folder loader's splitmix of (seed, epoch))."""
    from trainer.data.samplers import sample_seed

    return sample_seed(int(seed), int(epoch), 0) % _SEED_MOD


@intrinsic
def _address_as_pointer(typingctx, address):
    """`address` (an integer) as a void pointer, in numba-compiled code (for numba.carray)."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))

    return types.voidptr(address), codegen


class SeededCropDecoder(ResizedCropRGBImageDecoder):
    """ffcv's ResizedCropRGBImageDecoder.generate_code (ffcv 1.0.2, fields/rgb_image.py), with numba's generator
    seeded per image from (`epoch_seed`, image index) before its crop, and a horizontal flip with probability
    `flip` drawn after it. `epoch_seed` is read by the compiled code at each batch: set it before the epoch's
    loader thread starts (the Loader's `before_epoch`), no compile needed."""

    flip = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the one int64 the compiled decode reads its seed from, at an address fixed for the decoder's lifetime
        self._seed = np.zeros(1, dtype=np.int64)

    @property
    def epoch_seed(self) -> int:
        return int(self._seed[0])

    @epoch_seed.setter
    def epoch_seed(self, value: int) -> None:
        self._seed[0] = int(value)

    def generate_code(self) -> Callable:
        from ffcv.pipeline.compiler import Compiler

        jpg = FFCV_IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(ffcv_imdecode)
        resize_crop_c = Compiler.compile(ffcv_resize_crop)
        get_crop_c = Compiler.compile(self.get_crop_generator)
        scale = np.asarray(self.scale, dtype=np.float64)
        ratio = np.asarray(self.ratio, dtype=np.float64)
        seed_address = self._seed.ctypes.data  # the array lives as long as the decoder, and the code with it
        flip = float(self.flip)

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            base = carray(_address_as_pointer(seed_address), 1, np.int64)[0]  # this epoch's seed, read now
            for dst_ix in my_range(len(batch_indices)):
                source_ix = batch_indices[dst_ix]
                # this thread's generator, seeded for this image in this epoch
                np.random.seed(np.uint32((base + np.int64(source_ix) * np.int64(1000003)) % np.int64(_SEED_MOD)))
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height = np.uint32(field["height"])
                width = np.uint32(field["width"])
                if field["mode"] == jpg:
                    temp_buffer = temp_storage[dst_ix]
                    imdecode_c(image_data, temp_buffer, height, width, height, width, 0, 0, 1, 1, False, False)
                    selected_size = 3 * height * width
                    temp_buffer = temp_buffer.reshape(-1)[:selected_size]
                    temp_buffer = temp_buffer.reshape(height, width, 3)
                else:
                    temp_buffer = image_data.reshape(height, width, 3)
                i, j, h, w = get_crop_c(height, width, scale, ratio)
                resize_crop_c(temp_buffer, i, i + h, j, j + w, destination[dst_ix])
                if flip > 0 and np.random.random() < flip:
                    destination[dst_ix] = destination[dst_ix][:, ::-1].copy()
            return destination[: len(batch_indices)]

        decode.is_parallel = True
        return decode


class SeededRandomResizedCropRGBImageDecoder(SeededCropDecoder):
    """ffcv's RandomResizedCropRGBImageDecoder (the same crop generator), seeded per image (SeededCropDecoder)."""

    def __init__(self, output_size: tuple[int, int], scale=(0.08, 1.0), ratio=(0.75, 4 / 3), flip: float = 0.0):
        super().__init__(output_size)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.flip = float(flip)

    @property
    def get_crop_generator(self) -> Callable:
        return ffcv_get_random_crop


class ScaleJitterRGBImageDecoder(SeededCropDecoder):
    """Scale jitter (VGG Sec. 3.1, ResNet Sec. 3.4) as a decoder: the shorter side's size S drawn uniformly from
    the integers [low, high] (pixels at `resolution`), a random square crop of what would be `resolution` pixels
    after resizing to S, resized to the output size. The proportions hold when the output size changes
    (progressive resizing)."""

    def __init__(self, output_size: tuple[int, int], low: int, high: int, resolution: int) -> None:
        super().__init__(output_size)
        self.scale = np.array([low, high], dtype=np.float64)
        self.ratio = np.array([resolution], dtype=np.float64)

    @property
    def get_crop_generator(self) -> Callable:
        return _scale_jitter_crop


class SquashRandomCropRGBImageDecoder(SeededCropDecoder):
    """The squashed form of AlexNet's crop as a decoder: the image resized to `size` x `size`, a random `resolution`
    crop of it; i.e. a random (resolution / size) fraction of each side of the stored image, resized to the output
    size."""

    def __init__(self, output_size: tuple[int, int], size: int, resolution: int) -> None:
        super().__init__(output_size)
        self.scale = np.array([resolution / size], dtype=np.float64)
        self.ratio = np.array([0.0])

    @property
    def get_crop_generator(self) -> Callable:
        return _squash_random_crop


class CenterRandomCropRGBImageDecoder(SquashRandomCropRGBImageDecoder):
    """AlexNet's crop (Sec. 2 and 4.1) as a decoder: the shorter side resized to `size`, the central `size` x `size`
    square, a random `resolution` crop of it; i.e. a random square of (resolution / size) of the shorter side inside
    the stored image's central square, resized to the output size."""

    @property
    def get_crop_generator(self) -> Callable:
        return _center_random_crop


def train_decoder(augment: Mapping[str, Any], output: int, resolution: int) -> Any:
    """The training image decoder for `augment` (conf/augment): its crop, resized to `output` px, at the data's
    `resolution` (the crop sizes of `augment` are at 224 px and scaled to it). Our seeded crop decoders draw the flip
    too, seeded per image (the module docstring, "Seeded augmentation")."""
    decoder = _train_crop(augment, output, resolution)
    if hasattr(decoder, "epoch_seed"):
        decoder.flip = float(augment.get("hflip") or 0.0)
    return decoder


def _train_crop(augment: Mapping[str, Any], output: int, resolution: int) -> Any:
    crop = augment.get("crop", "random_resized")
    size = (output, output)
    if crop == "random_resized":
        return SeededRandomResizedCropRGBImageDecoder(
            size, scale=tuple(augment["scale"]), ratio=tuple(augment["ratio"])
        )
    if crop == "scale_jitter":
        low, high = (_scaled(s, resolution) for s in augment["jitter_sizes"])
        if not 0 < low <= high:
            raise ConfigError(f"augment.jitter_sizes={list(augment['jitter_sizes'])} is not a range of sizes")
        return ScaleJitterRGBImageDecoder(size, low, high, resolution)
    if crop == "center_random":
        return CenterRandomCropRGBImageDecoder(size, _scaled(augment["resize"], resolution), resolution)
    if crop == "squash_random":
        return SquashRandomCropRGBImageDecoder(size, _scaled(augment["resize"], resolution), resolution)
    if crop in ("pad_random", "none"):  # CIFAR: images stored at their size; RandomTranslate pads and crops
        return SimpleRGBImageDecoder()
    raise ConfigError(f"augment.crop='{crop}' is not one of {', '.join(CROPS)}")
