"""Data: ImageNet-layout folders, their validation, the LightningDataModules (folders, FFCV .beton files: one base,
trainer.data.base) and the bundled sample set, CIFAR-10/100 archives."""

from trainer.data.base import ImageDataModule
from trainer.data.cifar import CifarDataModule
from trainer.data.datamodule import ImageFolderDataModule
from trainer.data.ffcv import FFCVDataModule
from trainer.data.folder import validate_layout
from trainer.data.sample import write_sample_set

__all__ = [
    "CifarDataModule",
    "FFCVDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "validate_layout",
    "write_sample_set",
]
