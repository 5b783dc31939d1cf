"""FFCV .beton files: their format and class index (`format`), writing them (`writer`, with ffcv's writer loop made
robust in `dataset_writer`; `convert` for the data configs and the cached sample-set files), the pipeline operations
and the loader ffcv lacks (`ops`, `loader`: these two import ffcv) and the data module (`datamodule`).

Nothing imported here imports ffcv at module level: `require_ffcv()` says in one line what to install where it is
missing.
"""

from trainer.data.ffcv.convert import ensure_beton, write_from_config
from trainer.data.ffcv.datamodule import FFCVDataModule
from trainer.data.ffcv.format import BetonInfo, check_beton, require_ffcv, sidecar_path, skipped_path
from trainer.data.ffcv.writer import WriteOptions, WriteResult, write_beton

__all__ = [
    "BetonInfo",
    "FFCVDataModule",
    "WriteOptions",
    "WriteResult",
    "check_beton",
    "ensure_beton",
    "require_ffcv",
    "sidecar_path",
    "skipped_path",
    "write_beton",
    "write_from_config",
]
