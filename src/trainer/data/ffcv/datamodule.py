"""LightningDataModule over FFCV .beton files, with the folder data module's config keys and semantics (the
shared base, trainer.data.base.ImageDataModule).

`data=imagenet_ffcv` / `data=sample_ffcv` are drop-in options beside `data=imagenet` / `data=sample`: the same
class index (sorted class folders, checked against the class index written beside each .beton), batch keys (global
batch split over devices, drop_last for training only), crops and normalisation:

- training: RandomResizedCrop (`augment.scale`, `augment.ratio`) + horizontal flip (`augment.hflip`), in ffcv's
  decoder; the recipes' `scale_jitter`, `center_random` and `squash_random` crops as decoders of their own
  (trainer.data.ffcv.ops); AutoAugment, rotation, colour jitter and PCA lighting as batched tensor ops on
  the training device after loading (trainer.data.batch_augment, applied in `on_after_batch_transfer`);
- validation: a centre crop at the model's crop ratio, resized to `resolution` (ffcv's CenterCropRGBImageDecoder);
- the model's mean/std.

Pipelines. On the CPU: decode/crop/flip -> NormalizeImage (float32, torchvision's exact values) -> ToTensor ->
ToTorchImage; NormalizeImage must come before ToTensor (ffcv 1.0.2's pipeline planner never returns with the other
order on the CPU). On a CUDA device: decode/crop/flip -> ToTensor -> ToDevice(non_blocking) -> ToTorchImage
(channels-last) -> normalisation on the device in float16 / bfloat16 (from `trainer.precision`, or
`device_dtype`), so uint8 crosses the bus. Where batched augmentations run, the pipeline hands over uint8 and they
normalise.

What differs from the folder loader: resizing is OpenCV's area interpolation (`interpolation` is not used), done
once on the crop; the validation crop is taken before resizing (the folder loader resizes, then crops: the same
region up to rounding, resampled differently unless no resampling is needed); images written in `jpg` or
`proportion` mode were re-encoded as JPEG at writing; undecodable images were skipped when the file was written;
ffcv's loader workers are threads in this process (`num_workers`). The order follows `seed` and the epoch, and the
random crops and flips follow `seed`, the epoch and the image (trainer.data.ffcv.ops, "Seeded augmentation"): two
runs with the same seed read the same batches, and a resumed run those of the uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.data.base import ImageDataModule
from trainer.data.batch_augment import BatchAugment, needs_batch_augment
from trainer.data.ffcv.convert import ensure_beton
from trainer.data.ffcv.format import BetonInfo, check_beton, check_class_mapping, require_ffcv
from trainer.data.ffcv.writer import WriteOptions
from trainer.data.folder import validate_layout
from trainer.errors import ConfigError, DataError

ORDERS = ("auto", "random", "quasi_random", "sequential")
DEVICE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The sample set's .beton files: raw pixels (decoded as the folder loader decodes the JPEGs), small pages.
SAMPLE_WRITE = {"write_mode": "raw", "max_resolution": None, "page_size": 1 << 21, "num_workers": 2}


class FFCVDataModule(ImageDataModule):
    """Train/val loaders over `train_beton` / `val_beton` (written by scripts/write_ffcv.py from an ImageNet-layout
    folder); every other key as ImageFolderDataModule's (trainer.data.base.ImageDataModule).

    `root` is the source folder: where the .beton files were written from, or (with `sample=True`) where the
    bundled sample set is written and converted once. When it exists its class folders must match the class
    index of the files. `order`: `auto` (RANDOM with several devices, QUASI_RANDOM otherwise, as FFCV's
    ImageNet example), `random`, `quasi_random` or `sequential`; validation is always sequential. `os_cache`:
    ffcv's, let the OS page cache hold the file (true) or ffcv's own process cache (false). `batches_ahead`:
    batches prepared in advance. `device_dtype`: the dtype of normalised images on a CUDA device (`auto`: from
    the trainer's precision). `verify`: compare the sha256 of the whole files once at setup. `write`: how the
    sample set is written (trainer.data.ffcv.writer.WriteOptions). `dataset`: the named data set the files hold
    (`cifar10`, `cifar100`: the paper figures a report compares with), null for any other. `pin_memory` and
    `persistent_workers` (data=imagefolder's keys) are not used: ffcv pins its own buffers, and its threads live as
    long as the loader.
    """

    def __init__(
        self,
        train_beton: str,
        val_beton: str,
        root: str | None = None,
        order: str = "auto",
        os_cache: bool = True,
        batches_ahead: int = 3,
        device_dtype: str = "auto",
        seed: int = 0,
        verify: bool = False,
        write: Mapping[str, Any] | None = None,
        dataset: str | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        **kwargs: Any,
    ) -> None:
        require_ffcv(f"the FFCV data module ({Path(str(train_beton)).name}, {Path(str(val_beton)).name})")
        super().__init__(root=root, **kwargs)
        if order not in ORDERS:
            raise ConfigError(f"data.order='{order}' is not one of {', '.join(ORDERS)}")
        if device_dtype != "auto" and device_dtype not in DEVICE_DTYPES:
            raise ConfigError(f"data.device_dtype='{device_dtype}' is not one of auto, {', '.join(DEVICE_DTYPES)}")
        if int(batches_ahead) < 1:
            raise ConfigError(f"data.batches_ahead must be positive, got {batches_ahead}")
        self.train_beton = str(train_beton)
        self.val_beton = str(val_beton)
        self.order = order
        self.os_cache = bool(os_cache)
        self.batches_ahead = int(batches_ahead)
        self.device_dtype = device_dtype
        self.seed = int(seed)
        self.verify = bool(verify)
        self.write = WriteOptions.from_mapping({**SAMPLE_WRITE, **dict(write or {})})
        self.dataset = dataset  # the data set the files hold where it is a known one (cifar10, cifar100): reports
        self.loader_device: torch.device | str | None = None  # None: the trainer's device (CPU without one)
        self._info: dict[str, BetonInfo] = {}
        self._prepared = False
        self._loaders: dict[str, Any] = {}
        self._train_decoder: Any = None
        self._batch_augment: BatchAugment | None = None

    # -- files -------------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        if self._prepared:
            return
        if self.sample:
            super().prepare_data()  # the sample set's JPEG folders, once
            classes = validate_layout(self.root, (self.train_split, self.val_split))
            for split, out in ((self.train_split, self.train_beton), (self.val_split, self.val_beton)):
                ensure_beton(Path(self.root) / split, out, classes, self.write, split=split)
        self._prepared = True

    @property
    def classes(self) -> list[str]:
        """The class index of the .beton files, checked: train and val agree, the class count is the expected one,
        and the class folders of `root`, where it exists, are the same."""
        if self._classes is None:
            self.prepare_data()
            train = check_beton(self.train_beton, verify=self.verify)
            val = check_beton(self.val_beton, verify=self.verify)
            check_class_mapping(val, train.classes, f"the training file '{train.path}'")
            expected = self.expected_num_classes
            if expected is not None and len(train.classes) != expected:
                raise DataError(
                    f".beton '{train.path}' holds {len(train.classes)} classes but data.num_classes={expected}"
                )
            root = Path(self.root) if self.root else None
            if root is not None and root.is_dir():
                splits = [s for s in (self.train_split, self.val_split) if (root / s).is_dir()]
                if splits:
                    check_class_mapping(train, validate_layout(root, splits), f"data.root '{root}'")
            self._info = {"train": train, "val": val}
            self._classes = list(train.classes)
        return self._classes

    def info(self, split: str) -> BetonInfo:
        """The checked class index of the `train` or `val` file."""
        _ = self.classes
        return self._info[split]

    # -- pipelines ---------------------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        if self.loader_device is not None:
            return torch.device(self.loader_device)
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _dtype(self, device: torch.device) -> torch.dtype:
        if device.type != "cuda":
            return torch.float32
        if self.device_dtype != "auto":
            return DEVICE_DTYPES[self.device_dtype]
        precision = str(getattr(self.trainer, "precision", "32")) if self.trainer is not None else "32"
        if "bf16" in precision:
            return torch.bfloat16
        return torch.float16 if precision.startswith("16") else torch.float32

    def _threads(self) -> int:
        import numba

        return max(1, min(int(self.num_workers), int(numba.config.NUMBA_NUM_THREADS)))

    def _order(self, train: bool, distributed: bool) -> Any:
        from ffcv.loader import OrderOption

        if not train:
            return OrderOption.SEQUENTIAL
        order = self.order
        if order == "auto":
            order = "random" if distributed else "quasi_random"
        if order == "quasi_random" and distributed:
            raise ConfigError("data.order=quasi_random is not available with several devices (ffcv); use random")
        return OrderOption[order.upper()]

    def _pipelines(self, train: bool, device: torch.device) -> dict[str, list[Any]]:
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
        from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

        from trainer.data.ffcv.ops import DeviceNormalize, ExactNormalize, train_decoder

        mean, std = tuple(self.mean), tuple(self.std)
        resolution = int(self.resolution)
        deferred = False  # normalisation left to BatchAugment
        if train:
            augment = self.train_augment()
            self._train_decoder = train_decoder(augment, self.train_resolution, resolution)
            image: list[Any] = [self._train_decoder]  # crop and flip (seeded per image)
            if augment.get("crop") in ("pad_random", "none"):  # CIFAR: stored at their size, decoded whole
                # zero padding on each side, then a random crop of the size; flips by ffcv's (unseeded) op
                from ffcv.transforms import RandomHorizontalFlip, RandomTranslate

                if augment.get("crop") == "pad_random":
                    image.append(RandomTranslate(padding=int(augment.get("padding", 4)), fill=(0, 0, 0)))
                if augment.get("hflip"):
                    image.append(RandomHorizontalFlip(float(augment["hflip"])))
            deferred = needs_batch_augment(augment)
            self._batch_augment = (
                BatchAugment(augment, resolution=resolution, mean=mean, std=std, dtype=self._dtype(device))
                if deferred
                else None
            )
        else:
            # timm's eval crop keeps resolution / floor(resolution / crop_ratio) of the shorter side; the same
            # fraction here (a hair above, so that an exact integer crop is not truncated by rounding).
            ratio = resolution / math.floor(resolution / float(self.crop_ratio)) * (1 + 1e-9)
            image = [CenterCropRGBImageDecoder((resolution, resolution), ratio=ratio)]
        label: list[Any] = [IntDecoder(), ToTensor(), Squeeze(1)]
        if device.type == "cuda":
            image += [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(channels_last=True)]
            if not deferred:
                image.append(DeviceNormalize(mean, std, self._dtype(device)))
            label.append(ToDevice(device, non_blocking=True))
        else:
            if not deferred:
                image.append(ExactNormalize(mean, std))  # before ToTensor on the CPU (see the module docstring)
            image += [ToTensor(), ToTorchImage(channels_last=True)]
        return {"image": image, "label": label}

    def _loader(self, split: str) -> Any:
        from trainer.data.ffcv.loader import Loader

        train = split == "train"
        info = self.info(split)
        self._close(split)
        per_device = self.per_device_batch_size
        distributed = self.world_size > 1
        indices = info.indices()
        drop_last = False
        if distributed and not train:
            # Exact distributed evaluation, as the folder loader's UnrepeatedDistributedSampler: each rank reads its
            # strided share of the val set in order, unpadded (ffcv's distributed SEQUENTIAL order would pad with
            # DistributedSampler, counting some images twice in the summed metrics).
            if indices is None:
                indices = np.arange(info.num_samples, dtype=np.uint64)
            indices = indices[self.global_rank :: self.world_size]
            distributed = False
        if train:
            per_device_samples = math.ceil(info.num_images / self.world_size)
            drop_last = self.drop_last and per_device_samples >= per_device
        trainer = self.trainer
        try:
            loader = Loader(
                str(info.path),
                batch_size=per_device,
                num_workers=self._threads(),
                os_cache=self.os_cache,
                order=self._order(train, distributed),
                distributed=distributed,
                seed=self.seed,
                indices=indices,
                pipelines=self._pipelines(train, self._device()),
                drop_last=drop_last,
                batches_ahead=self.batches_ahead,
                epoch=(lambda: trainer.current_epoch) if train and trainer is not None else None,
                before_epoch=self._begin_train_epoch if train else None,
            )
        except (ConfigError, DataError):
            raise
        except Exception as exc:  # ffcv / numba failures: name the file, in one line
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise DataError(f"ffcv cannot read '{info.path}': {type(exc).__name__}: {reason}") from None
        self._loaders[split] = loader
        return loader

    def _close(self, split: str | None = None) -> None:
        for name in [split] if split else list(self._loaders):
            loader = self._loaders.pop(name, None)
            if loader is not None:
                loader.close()

    # -- loaders -----------------------------------------------------------------------------------------------

    def _begin_train_epoch(self, epoch: int | None = None) -> int:
        skip = super()._begin_train_epoch(epoch)
        if self._train_decoder is not None and self._iterator_epoch is not None:
            from trainer.data.ffcv.ops import epoch_seed

            self._train_decoder.epoch_seed = epoch_seed(self.seed, self._iterator_epoch)
        return skip

    def set_train_resolution(self, resolution: int) -> None:
        """Decode training images at `resolution` from the next epoch on (the decoder's output size)."""
        super().set_train_resolution(resolution)
        if self._train_decoder is not None:
            self._train_decoder.output_size = (self._train_resolution, self._train_resolution)

    def train_dataloader(self) -> Any:
        self.setup("fit")
        return self._loader("train")

    def val_dataloader(self) -> Any:
        self.setup("validate")
        return self._loader("val")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The batched training augmentations (and their normalisation), where the pipeline handed over uint8."""
        if batch is None or not isinstance(batch, (tuple, list)) or batch[0].dtype != torch.uint8:
            return batch
        if self._batch_augment is None:
            raise RuntimeError("a uint8 batch without its BatchAugment")
        images, targets = batch
        augment = self._batch_augment.to(images.device)
        return augment(images), targets

    def teardown(self, stage: str | None = None) -> None:
        self._close()

    # -- evaluation (evaluate.py) ------------------------------------------------------------------------------

    def prepare_eval(self, split: str) -> None:
        """`val` reads the validation file, the training split the training file; FFCV data has no other."""
        if split != "val":
            if split != self.train_split:
                raise ConfigError(
                    f"eval.split={split}: FFCV data has a train and a val file; set data.val_beton=<file>"
                )
            self.val_beton = self.train_beton
        super().prepare_eval(split)

    def eval_dataloader(
        self,
        transform: Callable | None = None,
        *,
        protocol: str = "center",
        device: torch.device | None = None,
        collate_fn: Callable | None = None,
    ) -> Iterable:
        """The centre crop: the FFCV validation pipeline itself (the .beton named by data.val_beton) on `device`
        (default: the trainer's); a protocol's own `transform`: the image folders under `root`, as the folder data
        module reads them. Under a trainer with several processes, either is this rank's exact, unpadded share."""
        if transform is None:
            self.loader_device = device
            return self.val_dataloader()
        if not Path(self.root, self.eval_split).is_dir():
            raise ConfigError(
                f"eval.protocol={protocol} reads the image folders, and data.root '{self.root}' has no "
                f"'{self.eval_split}' folder (the FFCV files serve eval.protocol=center)"
            )
        return super().eval_dataloader(transform, protocol=protocol, device=device, collate_fn=collate_fn)
