"""Everything this project takes from the inside of torch, Lightning, timm, Hydra and ffcv, in one place: the private
members (names starting with `_`, or in a `_module`), the undocumented internals the ffcv patches rely on, and the
filters for library messages no setting of ours can change. Tested with TESTED_VERSIONS; pyproject.toml bounds these
libraries from above and constraints.txt pins what setup installs.

PRIVATE_MEMBERS lists every such member with where it is used and why; tests/test_compat.py checks that each still
exists in the installed libraries (and that no other file of src/ reaches a private library member), so an upgrade
that removes one fails there, by name, instead of deep inside a training run. To upgrade a library: bump its bound
and constraints.txt, run tests/test_compat.py, fix the accessors here, then update TESTED_VERSIONS.

Hydra's and ffcv's members are imported only when asked for (`from trainer.compat import BasicSweeper`, through the
module's __getattr__), Lightning's inside the accessors: importing this module costs no more than `import trainer`
(torch and timm), and ffcv, an optional extra, is imported only after trainer.data.ffcv.format.require_ffcv().
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch.nn as nn
from timm.models._efficientnet_builder import BN_EPS_TF_DEFAULT
from timm.models.densenet import _create_densenet as create_densenet
from timm.models.efficientnet import _gen_efficientnet as gen_efficientnet
from timm.models.efficientnet import _gen_mobilenet_v1 as gen_mobilenet_v1

__all__ = [
    "BN_EPS_TF_DEFAULT",
    "PRIVATE_MEMBERS",
    "TESTED_VERSIONS",
    "ConvNd",
    "NormBase",
    "PrivateMember",
    "cache_ffcv_jit_helpers",
    "cluster_environment",
    "compiled_call",
    "create_densenet",
    "csv_writer_keeping_files",
    "data_fetcher",
    "eager_call",
    "ffcv_writer_base",
    "gen_efficientnet",
    "gen_mobilenet_v1",
    "job_error",
    "logger_connector",
    "logger_experiment",
    "logger_fs",
    "quiet_known_noise",
    "save_checkpoint_now",
    "set_compiled_call",
    "set_ffcv_compiler_torch",
    "set_logger_experiment",
    "set_wandb_run_id",
    "should_accumulate",
    "should_skip_checkpoint",
    "slurm_requeue_handler",
    "sweeper_params",
    "wandb_init_args",
    "wandb_run_id",
]

from trainer.compat_members import PRIVATE_MEMBERS, TESTED_VERSIONS, PrivateMember

# Hydra's and ffcv's members, imported on first use: name here -> "module:attribute".
_LAZY = {
    "BasicSweeper": "hydra._internal.core_plugins.basic_sweeper:BasicSweeper",
    "get_args_parser": "hydra._internal.utils:get_args_parser",
    "FFCVEpochIterator": "ffcv.loader.epoch_iterator:EpochIterator",
    "FFCVGraph": "ffcv.pipeline.graph:Graph",
    "FFCVMemoryAllocator": "ffcv.memory_allocator:MemoryAllocator",
    "FFCV_IMAGE_MODES": "ffcv.fields.rgb_image:IMAGE_MODES",
    "ffcv_get_random_crop": "ffcv.fields.rgb_image:get_random_crop",
    "ffcv_imdecode": "ffcv.libffcv:imdecode",
    "ffcv_resize_crop": "ffcv.libffcv:resize_crop",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name].split(":")
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- torch ----------------------------------------------------------------------------------------------------------

NormBase = nn.modules.batchnorm._NormBase  # BatchNorm*d, InstanceNorm*d and their lazy forms
ConvNd = nn.modules.conv._ConvNd  # Conv*d and ConvTranspose*d


def compiled_call(model: nn.Module) -> Callable | None:
    """What `model(...)` runs after `model.compile()` (None: the eager forward)."""
    return model._compiled_call_impl


def set_compiled_call(model: nn.Module, call: Callable | None) -> None:
    """Make `model(...)` run `call` (None: eagerly)."""
    model._compiled_call_impl = call


def eager_call(model: nn.Module) -> Callable:
    """`model(...)` without the compiled call (hooks included)."""
    return model._call_impl


# -- torchmetrics -------------------------------------------------------------------------------------------------


def set_update_count(metric: Any, count: int) -> None:
    """Mark a metric whose state was put back from a checkpoint as updated `count` times (compute() warns at 0)."""
    metric._update_count = count


# -- Lightning ------------------------------------------------------------------------------------------------------


def logger_connector(trainer: Any) -> Any:
    """The trainer's logger connector (`should_update_logs`: whether this step's values go to the loggers)."""
    return trainer._logger_connector


def should_accumulate(trainer: Any) -> bool:
    """Whether the current step is inside a gradient-accumulation window (no optimizer step at its end)."""
    return trainer.fit_loop._should_accumulate()


def data_fetcher(trainer: Any) -> Any:
    """The fit loop's data fetcher (the training iterator), or None before it exists."""
    return getattr(trainer.fit_loop, "_data_fetcher", None)


def cluster_environment(trainer: Any) -> Any:
    """The trainer's cluster environment (SLURMEnvironment on SLURM)."""
    return trainer._accelerator_connector.cluster_environment


def slurm_requeue_handler(trainer: Any) -> Callable[[int, Any], None]:
    """Lightning's handler of SLURM's requeue signal, `(signum, frame)`: checkpoint and requeue."""
    return trainer._signal_connector._slurm_sigusr_handler_fn


def should_skip_checkpoint(callback: Any, trainer: Any) -> bool:
    """ModelCheckpoint's own reasons not to save now (fast_dev_run, sanity check, already saved at this step)."""
    return callback._should_skip_saving_checkpoint(trainer)


def save_checkpoint_now(callback: Any, trainer: Any) -> None:
    """What ModelCheckpoint does at its own trigger: its top-k checkpoint, then last.ckpt."""
    candidates = callback._monitor_candidates(trainer)
    callback._save_topk_checkpoint(trainer, candidates)
    callback._save_last_checkpoint(trainer, candidates)


def logger_fs(logger: Any) -> Any:
    """The fsspec file system of a CSVLogger or its ExperimentWriter."""
    return logger._fs


def logger_experiment(logger: Any) -> Any:
    """A logger's experiment object if it was made (CSVLogger, WandbLogger), else None; without making it."""
    return logger._experiment


def set_logger_experiment(logger: Any, experiment: Any) -> None:
    logger._experiment = experiment


@functools.cache
def csv_writer_keeping_files() -> type:
    """Lightning's CSV ExperimentWriter, without its warning-and-delete of an existing metrics.csv."""
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class ExperimentWriterKeepingFiles(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            pass

    return ExperimentWriterKeepingFiles


def wandb_init_args(logger: Any) -> dict[str, Any]:
    """The keyword arguments a WandbLogger passes to wandb.init (the logger's own dict: changes stick)."""
    return logger._wandb_init


def wandb_run_id(logger: Any) -> str | None:
    return logger._id


def set_wandb_run_id(logger: Any, run_id: str) -> None:
    """Resume or create wandb run `run_id` when the logger makes its experiment."""
    logger._id = logger._wandb_init["id"] = run_id


# -- Hydra ----------------------------------------------------------------------------------------------------------


def job_error(result: Any) -> Any:
    """A failed Hydra job's exception (JobReturn.return_value raises it instead)."""
    return result._return_value


def sweeper_params(sweeper: Any) -> list[str]:
    """A BasicSweeper's `hydra.sweeper.params`, as override strings."""
    return sweeper._parse_config()


# -- ffcv -----------------------------------------------------------------------------------------------------------


def set_ffcv_compiler_torch(torch_view: Any) -> None:
    """Make ffcv's compiler module see `torch_view` as torch (its `ch`)."""
    import ffcv.pipeline.compiler

    ffcv.pipeline.compiler.ch = torch_view


@functools.cache
def cache_ffcv_jit_helpers() -> None:
    """Import ffcv with numba's compiles of the plain jitted functions it calls kept in numba's on-disk cache (what
    `@njit(cache=True)` does), instead of compiled again in every process: the typed-Dict functions ffcv's
    rgb_image module calls at import (its IMAGE_MODES: caching is switched on before the import) and QuasiRandom's
    order generator. About 3 s of each process that imports ffcv on the 2-core machine (benchmarks/README.md). The
    pipeline code ffcv generates per loader is not cached: it holds ctypes pointers, which numba refuses to cache.
    Where numba finds no writable cache folder, it compiles as before. Raises ImportError where ffcv cannot be
    imported."""
    from numba.core.dispatcher import Dispatcher
    from numba.typed import typeddict

    dispatchers = [obj for obj in vars(typeddict).values() if isinstance(obj, Dispatcher)]
    for dispatcher in dispatchers:
        with contextlib.suppress(RuntimeError):  # "cannot cache function ...: no locator available"
            dispatcher.enable_caching()
    from ffcv.traversal_order import quasi_random  # imports ffcv, so after the typed-Dict functions

    with contextlib.suppress(RuntimeError):
        quasi_random.generate_order_inner.enable_caching()


@functools.cache
def ffcv_writer_base() -> type:
    """ffcv's DatasetWriter whose write loop (its `_write_common`) is the subclass's `write_loop(num_samples,
    queue_content, work_fn, extra_worker_args)`."""
    from ffcv.writer import DatasetWriter

    class WriterBase(DatasetWriter):
        def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
            return self.write_loop(num_samples, queue_content, work_fn, extra_worker_args)

        def write_loop(self, num_samples, queue_content, work_fn, extra_worker_args):
            raise NotImplementedError

    return WriterBase


# -- library messages no setting of ours can change ------------------------------------------------------------------
# Silenced one by one, each named exactly (never a category or a module wholesale); a message that changes wording in
# a later version simply shows again.
# - Lightning's "Tip: ... litlogger" at every Trainer construction (an advertisement; no logger of ours is missing);
# - Lightning's "`srun` is available ... but is not used", raised wherever SLURM's client is installed, for local runs
#   too (SLURM jobs go through slurm/train.sbatch, which uses srun);
# - "`isinstance(treespec, LeafSpec)` is deprecated": torch 2.14 about Lightning 2.6's own pytree helper;
# - "Checkpoint directory ... exists and is not empty" when resuming, where it is expected (a fresh run in a
#   non-empty run directory is refused before this point: engine/run_dir.py).

LITLOGGER_TIP = "💡 Tip: For seamless cloud logging and experiment tracking"
NOISE = (
    r"The `srun` command is available on your system but is not used",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
RESUME_NOISE = (r"Checkpoint directory .* exists and is not empty",)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _drop_litlogger_tip() -> None:
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage(LITLOGGER_TIP))


@contextlib.contextmanager
def quiet_known_noise(resuming: bool = False) -> Iterator[None]:
    """Within: the messages above are not shown (the resume one only when `resuming`)."""
    _drop_litlogger_tip()
    with warnings.catch_warnings():
        for message in (*NOISE, *(RESUME_NOISE if resuming else ())):
            warnings.filterwarnings("ignore", message=message)
        yield
