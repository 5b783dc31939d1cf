"""Data: ImageNet-layout folders, their validation, the LightningDataModule and the bundled sample set."""

from trainer.data.datamodule import ImageFolderDataModule
from trainer.data.folder import validate_layout
from trainer.data.sample import write_sample_set

__all__ = ["ImageFolderDataModule", "validate_layout", "write_sample_set"]
