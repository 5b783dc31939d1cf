"""The table of trainer.compat: the library versions its private members were checked against, and every such member
with where it is used and why (tests/test_compat.py walks it against the installed libraries)."""

from typing import NamedTuple

# The versions the members below were checked against (the distribution names pip knows).
TESTED_VERSIONS = {
    "torch": "2.14.1",
    "lightning": "2.6.6",
    "torchmetrics": "1.9.0",
    "timm": "1.0.31",
    "hydra-core": "1.3.8",
    "ffcv": "1.0.2",
    "numba": "0.68.1",
}


class PrivateMember(NamedTuple):
    library: str  # distribution name, a key of TESTED_VERSIONS
    path: str  # importable module, then attributes: "module:Attr.attr"
    used_in: str
    why: str
    instance: bool = False  # an attribute set on instances (checked in the class's source), not on the class


PRIVATE_MEMBERS: tuple[PrivateMember, ...] = (
    # torch
    PrivateMember(
        "torch",
        "torch.nn:Module._compiled_call_impl",
        "engine/fast_paths.py",
        "what nn.Module.__call__ runs after model.compile(); swapped for a call that falls back to eager",
    ),
    PrivateMember("torch", "torch.nn:Module._call_impl", "engine/fast_paths.py", "the eager call, for the fallback"),
    PrivateMember(
        "torch", "torch.nn.modules.batchnorm:_NormBase", "engine/optim.py", "every BatchNorm/InstanceNorm: no decay"
    ),
    PrivateMember("torch", "torch.nn.modules.conv:_ConvNd", "engine/optim.py", "every convolution: depthwise test"),
    # torchmetrics
    PrivateMember(
        "torchmetrics",
        "torchmetrics:Metric._update_count",
        "engine/metrics.py",
        "a metric state restored from a step checkpoint counts as updated",
        instance=True,
    ),
    # Lightning
    PrivateMember(
        "lightning",
        "lightning.pytorch:Trainer._logger_connector",
        "engine/module.py",
        "its should_update_logs: Lightning's own rule for the steps it sends to the loggers",
        instance=True,
    ),
    PrivateMember(
        "lightning",
        "lightning.pytorch.loops:_FitLoop._should_accumulate",
        "engine/module.py",
        "a step inside a gradient-accumulation window logs nothing",
    ),
    PrivateMember(
        "lightning",
        "lightning.pytorch.loops:_FitLoop._data_fetcher",
        "engine/module.py",
        "the training iterator, made again after a resume where the data depends on the epoch",
        instance=True,
    ),
    PrivateMember(
        "lightning",
        "lightning.pytorch:Trainer._accelerator_connector",
        "engine/interrupt.py",
        "its cluster_environment: SLURM's requeue signal",
        instance=True,
    ),
    PrivateMember(
        "lightning",
        "lightning.pytorch:Trainer._signal_connector",
        "engine/interrupt.py",
        "Lightning's SLURM requeue handler, run at a step's end instead of inside the signal",
        instance=True,
    ),
    PrivateMember(
        "lightning",
        "lightning.pytorch.trainer.connectors.signal_connector:_SignalConnector._slurm_sigusr_handler_fn",
        "engine/interrupt.py",
        "the requeue itself (hpc checkpoint, scontrol requeue)",
    ),
    PrivateMember(
        "lightning",
        "lightning.pytorch.callbacks:ModelCheckpoint._should_skip_saving_checkpoint",
        "engine/last_checkpoint.py",
        "step checkpoints follow ModelCheckpoint's own reasons not to save",
    ),
    *(
        PrivateMember(
            "lightning",
            f"lightning.pytorch.callbacks:ModelCheckpoint.{name}",
            "engine/last_checkpoint.py",
            "a step checkpoint (and Ctrl-C's) saved as ModelCheckpoint saves at its own trigger",
        )
        for name in ("_monitor_candidates", "_save_topk_checkpoint", "_save_last_checkpoint")
    ),
    PrivateMember(
        "lightning",
        "lightning.pytorch.loggers.csv_logs:ExperimentWriter._check_log_dir_exists",
        "engine/loggers.py",
        "overridden: a resumed run keeps its metrics.csv",
    ),
    *(
        PrivateMember("lightning", path, "engine/loggers.py", "the resumable CSV logger", instance=True)
        for path in (
            "lightning.pytorch.loggers.csv_logs:ExperimentWriter._fs",
            "lightning.pytorch.loggers:CSVLogger._fs",
            "lightning.pytorch.loggers:CSVLogger._experiment",
        )
    ),
    *(
        PrivateMember(
            "lightning", f"lightning.pytorch.loggers:WandbLogger.{name}", "engine/wandb_logger.py", why, instance=True
        )
        for name, why in (
            ("_wandb_init", "wandb.init's arguments: quieter defaults, the run's config"),
            ("_id", "the run id, kept in the run directory for resuming"),
            ("_experiment", "whether the wandb run was made"),
        )
    ),
    # timm
    PrivateMember(
        "timm", "timm.models._efficientnet_builder:BN_EPS_TF_DEFAULT", "models/efficientnet.py", "TF's BN epsilon"
    ),
    PrivateMember(
        "timm", "timm.models.efficientnet:_gen_efficientnet", "models/efficientnet.py", "timm's EfficientNet builder"
    ),
    PrivateMember(
        "timm", "timm.models.efficientnet:_gen_mobilenet_v1", "models/mobilenet_v1.py", "widths timm does not register"
    ),
    PrivateMember("timm", "timm.models.densenet:_create_densenet", "models/densenet.py", "DenseNet-264"),
    # Hydra
    PrivateMember(
        "hydra-core",
        "hydra._internal.utils:get_args_parser",
        "cli.py",
        "Hydra's own command-line parser, to check overrides before composing",
    ),
    PrivateMember(
        "hydra-core",
        "hydra._internal.core_plugins.basic_sweeper:BasicSweeper",
        "hydra_plugins/trainer_sweeper",
        "the base of hydra/sweeper=trainer",
    ),
    PrivateMember(
        "hydra-core",
        "hydra._internal.core_plugins.basic_sweeper:BasicSweeper._parse_config",
        "hydra_plugins/trainer_sweeper",
        "the points of hydra.sweeper.params",
    ),
    PrivateMember(
        "hydra-core",
        "hydra.core.utils:JobReturn._return_value",
        "hydra_plugins/trainer_sweeper",
        "a failed point's exception without raising it",
    ),
    # ffcv (the loader and writer patches: data/ffcv/loader.py, dataset_writer.py, ops.py)
    PrivateMember(
        "numba",
        "numba.core.dispatcher:Dispatcher.enable_caching",
        "compat.py (cache_ffcv_jit_helpers)",
        "what @njit(cache=True) calls: keeps ffcv's plain jitted helpers compiled on disk",
    ),
    PrivateMember(
        "numba",
        "numba.typed.typeddict:_setitem",
        "compat.py (cache_ffcv_jit_helpers)",
        "one of the typed-Dict functions ffcv's rgb_image compiles at import, cached",
    ),
    PrivateMember(
        "ffcv",
        "ffcv.traversal_order.quasi_random:generate_order_inner",
        "compat.py (cache_ffcv_jit_helpers)",
        "QuasiRandom's jitted order generator, cached",
    ),
    PrivateMember(
        "ffcv", "ffcv.pipeline.compiler:ch", "data/ffcv/loader.py", "torch as ffcv's compiler sees it: keep our threads"
    ),
    PrivateMember(
        "ffcv",
        "ffcv.loader.epoch_iterator:EpochIterator",
        "data/ffcv/loader.py",
        "subclassed: a shorter queue and a close() that cannot hang",
    ),
    PrivateMember(
        "ffcv",
        "ffcv.loader.epoch_iterator:EpochIterator.output_queue",
        "data/ffcv/loader.py",
        "replaced in start() by a shorter queue",
        instance=True,
    ),
    PrivateMember(
        "ffcv",
        "ffcv.pipeline.graph:Graph.allocate_memory",
        "data/ffcv/loader.py",
        "replaced per loader: buffers reused across epochs",
    ),
    PrivateMember(
        "ffcv", "ffcv.pipeline.graph:Graph.collect_requirements", "data/ffcv/loader.py", "what the buffers must be"
    ),
    PrivateMember(
        "ffcv", "ffcv.loader:Loader.graph", "data/ffcv/loader.py", "the pipeline graph, patched above", instance=True
    ),
    PrivateMember(
        "ffcv",
        "ffcv.loader:Loader.next_traversal_order",
        "data/ffcv/loader.py",
        "overridden: the order from the pristine page table",
    ),
    PrivateMember("ffcv", "ffcv.loader:Loader.generate_code", "data/ffcv/loader.py", "__iter__ as ffcv's, reordered"),
    PrivateMember("ffcv", "ffcv.loader:Loader.code", "data/ffcv/loader.py", "__iter__ as ffcv's", instance=True),
    PrivateMember("ffcv", "ffcv.loader:Loader.recompile", "data/ffcv/loader.py", "__iter__ as ffcv's", instance=True),
    PrivateMember("ffcv", "ffcv.loader:Loader.next_epoch", "data/ffcv/loader.py", "the epoch to read", instance=True),
    PrivateMember(
        "ffcv",
        "ffcv.traversal_order:QuasiRandom.page_to_samples_array",
        "data/ffcv/loader.py",
        "shuffled in place by ffcv: restored before each epoch",
        instance=True,
    ),
    PrivateMember(
        "ffcv",
        "ffcv.writer:DatasetWriter._write_common",
        "data/ffcv/dataset_writer.py",
        "the write loop, replaced by one that notices failing workers (ffcv_writer_base)",
    ),
    PrivateMember(
        "ffcv",
        "ffcv.writer:DatasetWriter.prepare",
        "data/ffcv/dataset_writer.py",
        "the write loop's first step, as ffcv's",
    ),
    PrivateMember(
        "ffcv",
        "ffcv.writer:DatasetWriter.finalize",
        "data/ffcv/dataset_writer.py",
        "the write loop's last step, as ffcv's",
    ),
    *(
        PrivateMember(
            "ffcv",
            f"ffcv.writer:DatasetWriter.{name}",
            "data/ffcv/dataset_writer.py",
            "the write loop's",
            instance=True,
        )
        for name in ("metadata_sm", "metadata_type", "fields", "data_region_start", "page_size", "fname")
    ),
    PrivateMember(
        "ffcv", "ffcv.memory_allocator:MemoryAllocator", "data/ffcv/dataset_writer.py", "the write loop's allocator"
    ),
    PrivateMember(
        "ffcv",
        "ffcv.fields.rgb_image:ResizedCropRGBImageDecoder.generate_code",
        "data/ffcv/ops.py",
        "copied with a seeded generator (SeededCropDecoder)",
    ),
    PrivateMember("ffcv", "ffcv.fields.rgb_image:IMAGE_MODES", "data/ffcv/ops.py", "the copied decoder's"),
    PrivateMember("ffcv", "ffcv.fields.rgb_image:get_random_crop", "data/ffcv/ops.py", "RandomResizedCrop's crop"),
    PrivateMember("ffcv", "ffcv.libffcv:imdecode", "data/ffcv/ops.py", "the copied decoder's"),
    PrivateMember("ffcv", "ffcv.libffcv:resize_crop", "data/ffcv/ops.py", "the copied decoder's"),
    PrivateMember(
        "ffcv",
        "ffcv.pipeline.operation:Operation.memory_read",
        "data/ffcv/ops.py",
        "the copied decoder's",
        instance=True,
    ),
)
