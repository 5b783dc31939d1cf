"""The pieces of the FFCV pipelines that ffcv 1.0.2 lacks or gets wrong for this project (imports ffcv; the data
module imports this module only once ffcv is known to import).

- `ExactNormalize`: ffcv's NormalizeImage (a per-channel lookup table, on the CPU) with a table computed exactly as
  torchvision's ToTensor + Normalize compute it in float32, so the FFCV and folder loaders give bit-identical
  inputs for identical pixels.
- `DeviceNormalize`: uint8 -> normalised float16 / bfloat16 / float32 on the training device, in torch (ffcv's
  NormalizeImage needs cupy on the GPU, and knows no bfloat16); the output is channels-last.
- `ScaleJitterRGBImageDecoder`, `CenterRandomCropRGBImageDecoder`, `SquashRandomCropRGBImageDecoder`: the recipes'
  `scale_jitter` (VGG, ResNet), `center_random` (AlexNet) and `squash_random` crops as ffcv decoders: the crop the
  folder loader takes, located in the stored image and resized once.
- Seeded augmentation: ffcv's random crops and flips draw from numba's generator, one per thread, never seeded.
  The training decoders here (`SeededRandomResizedCropRGBImageDecoder` and the crop decoders above) seed it before each
  image's crop and flip with a function of (`seed`, epoch, the image's index in the file), as the folder loader
  seeds each sample (data/samplers.py); the flip is drawn in the decoder (ffcv's RandomHorizontalFlip draws a whole
  batch outside its threads). Issue 21 asks for (seed, epoch, rank, batch index); the image's index is the
  stricter reading: the same image gets the same crop in an epoch whatever the rank, the batch it lands in, the
  thread count or the batches skipped on resume. The epoch's seed is compiled into the pipeline, so the training
  pipeline is compiled again at each epoch start (a few seconds; ffcv's `recompile`).
- `Loader`: ffcv's Loader made safe for Lightning. ffcv recycles `batches_ahead + 2` output buffers and assumes the
  consumer holds one batch; Lightning holds two (it fetches the next batch before training on the current one),
  so one more buffer than the queue can fill is kept. The epoch that seeds the order comes from the trainer, and
  QUASI_RANDOM no longer depends on how many orders were drawn before (a resumed run reads the order the
  uninterrupted one would), `before_epoch` runs as each epoch's iterator is made
  (the moment its buffers are sized: progressive resizing), an abandoned epoch's thread is stopped when the next one
  starts, the buffers are reused from epoch to epoch while their shapes hold (ffcv makes new ones every epoch), and
  torch's thread count is left alone (ffcv sets it to its loader threads). This module imports ffcv:
  import it after trainer.data.beton.require_ffcv() (which keeps torch's threads as they were).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder, get_random_crop
from ffcv.libffcv import imdecode, resize_crop
from ffcv.loader import Loader as _FFCVLoader
from ffcv.loader.epoch_iterator import EpochIterator as _FFCVEpochIterator
from ffcv.pipeline import compiler as _compiler
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.graph import Graph
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State
from ffcv.transforms import NormalizeImage
from ffcv.traversal_order import QuasiRandom

__all__ = [
    "CenterRandomCropRGBImageDecoder",
    "DeviceNormalize",
    "ExactNormalize",
    "Loader",
    "ScaleJitterRGBImageDecoder",
    "SeededRandomResizedCropRGBImageDecoder",
    "SquashRandomCropRGBImageDecoder",
]


class _TorchKeepingThreads:
    """torch, as ffcv's compiler module sees it, minus `set_num_threads` (ffcv would set torch's intra-op threads
    to its loader threads for the whole process, e.g. 1 for `data.num_workers=1`, slowing CPU training; the
    change made by importing ffcv is undone by trainer.data.beton.require_ffcv)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def set_num_threads(n: int) -> None:
        pass


_compiler.ch = _TorchKeepingThreads()


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


class SeededCropDecoder(ResizedCropRGBImageDecoder):
    """ffcv's ResizedCropRGBImageDecoder.generate_code (ffcv 1.0.2, fields/rgb_image.py), with numba's generator
    seeded per image from (`epoch_seed`, image index) before its crop, and a horizontal flip with probability
    `flip` drawn after it. Set `epoch_seed` before the pipeline is compiled for the epoch."""

    epoch_seed = 0
    flip = 0.0

    def generate_code(self) -> Callable:
        from ffcv.pipeline.compiler import Compiler

        jpg = IMAGE_MODES["jpg"]
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        resize_crop_c = Compiler.compile(resize_crop)
        get_crop_c = Compiler.compile(self.get_crop_generator)
        scale = np.asarray(self.scale, dtype=np.float64)
        ratio = np.asarray(self.ratio, dtype=np.float64)
        base = np.int64(self.epoch_seed)
        flip = float(self.flip)

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
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
        return get_random_crop


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


def _describe(requirements: Mapping[str, Mapping[int, Any]]) -> tuple:
    """The shapes, dtypes and devices of a pipeline's allocation queries (what its buffers must be)."""

    def one(query: Any) -> Any:
        if isinstance(query, AllocationQuery):
            return (tuple(int(d) for d in query.shape), str(query.dtype), str(query.device))
        if isinstance(query, Sequence):
            return tuple(one(q) for q in query)
        return None

    return tuple((kind, node, one(q)) for kind, queries in sorted(requirements.items()) for node, q in queries.items())


def _on_cuda(buffer: Any) -> bool:
    if isinstance(buffer, (tuple, list)):
        return any(_on_cuda(b) for b in buffer)
    return isinstance(buffer, torch.Tensor) and buffer.is_cuda


class _EpochIterator(_FFCVEpochIterator):
    def start(self) -> None:
        # The Loader was built with one more batch ahead than asked (one more buffer); the queue keeps the asked
        # depth, so the producer never refills the buffer of the batch Lightning is still training on.
        self.output_queue = queue.Queue(max(1, self.loader.batches_ahead - 1))
        super().start()

    def close(self, timeout: float = 30.0) -> None:
        # ffcv's close() only asks the thread to stop; a thread that has finished its batches blocks forever
        # putting its end marker into a full queue. Drain the queue until the thread is gone.
        super().close()
        if threading.current_thread() is self or not self.is_alive():
            return
        deadline = time.monotonic() + timeout
        while self.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                while True:
                    self.output_queue.get_nowait()
            self.join(0.05)


class Loader(_FFCVLoader):
    """ffcv's Loader, safe for a consumer that holds two batches (see the module docstring). `epoch` returns the
    epoch whose order to read next (the trainer's current epoch); `batches_ahead` is the prefetch depth."""

    def __init__(
        self,
        *args: Any,
        batches_ahead: int = 3,
        epoch: Callable[[], int] | None = None,
        before_epoch: Callable[[int], int | None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, batches_ahead=int(batches_ahead) + 1, **kwargs)
        self._epoch = epoch
        self._before_epoch = before_epoch
        self._current: _EpochIterator | None = None
        self._buffers: tuple[Any, Any] | None = None  # (what they were made for, the buffers)
        self.graph.allocate_memory = self._allocate_memory

    def _allocate_memory(self, batch_size: int, slots: int) -> Any:
        # ffcv allocates every buffer afresh for every epoch: gigabytes of new pages to fault in per epoch at
        # ImageNet sizes (several % of a fast epoch). The same buffers serve the next epoch when nothing about them
        # changed (a new resolution makes new ones); __iter__ has stopped the previous epoch's thread by then.
        requirements, _ = self.graph.collect_requirements()
        key = (batch_size, slots, _describe(requirements))
        if self._buffers is not None and self._buffers[0] == key:
            if any(_on_cuda(b) for kind in self._buffers[1].values() for b in kind.values()):
                torch.cuda.synchronize()  # every stream: the last epoch's copies and reads are done
            return self._buffers[1]
        buffers = Graph.allocate_memory(self.graph, batch_size, slots)
        self._buffers = (key, buffers)
        return buffers

    def __iter__(self) -> _EpochIterator:
        self.close()
        if self._epoch is not None:
            self.next_epoch = int(self._epoch())
        skip = 0
        if self._before_epoch is not None:  # the epoch's decoder size and seed; the batches a resumed run skips
            skip = int(self._before_epoch(self.next_epoch) or 0)
        _compiler.Compiler.set_num_threads(self.num_workers)
        order = self.next_traversal_order()
        selected = order[: len(self) * self.batch_size][skip * self.batch_size :]  # skipped images are not read
        self.next_epoch += 1
        if self.code is None or self.recompile:
            self.generate_code()
        self._current = _EpochIterator(self, selected)
        return self._current

    def next_traversal_order(self) -> Any:
        # ffcv 1.0.2's QuasiRandom shuffles its page table in place, so an epoch's order depended on how many
        # orders were drawn before it; drawn from the pristine table, the order is a function of (seed, epoch).
        order = self.traversal_order
        if isinstance(order, QuasiRandom):
            pristine = getattr(self, "_pristine_pages", None)
            if pristine is None:
                pristine = self._pristine_pages = order.page_to_samples_array.copy()
            order.page_to_samples_array = pristine.copy()
        return super().next_traversal_order()

    def close(self) -> None:
        """Stop the epoch being read, if any (its thread and buffers)."""
        if self._current is not None:
            self._current.close()
            if self._current.is_alive():  # a thread that would not stop keeps its buffers
                self._buffers = None
            self._current = None
