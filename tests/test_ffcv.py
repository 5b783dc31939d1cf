"""The FFCV data path: writing and checking .beton files, the FFCV data module (the folder loader's semantics),
validation equivalence on one checkpoint, progressive resizing, the batched augmentations, and every bad input.

ffcv compiles each loader's pipeline with numba (seconds per loader), so the loaders are shared where tests allow.
"""

from __future__ import annotations

import errno
import gc
import importlib.util
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tests.helpers import PYTHON, ROOT, compose_config, copy_run, logged, run_script, tiny_overrides
from trainer.builders import build_datamodule
from trainer.data.batch_augment import BatchAugment, _apply_op, _jitter, needs_batch_augment
from trainer.data.folder import ImageFolderDataset, validate_layout
from trainer.engine import ProgressiveResizing
from trainer.errors import ConfigError, DataError
from trainer.evaluate import evaluate
from trainer.train import train

HAVE_FFCV = importlib.util.find_spec("ffcv") is not None
# numba's dispatcher finalizer can trip over a compile running in an ffcv loader thread; it is harmless noise
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning"
)
needs_ffcv = pytest.mark.skipif(
    not HAVE_FFCV, reason="ffcv is not installed (bash scripts/setup.sh installs it and its Debian packages)"
)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def _collect_loaders():
    """Collect each test's ffcv loaders while the warning filter above applies."""
    yield
    gc.collect()


def _one_line(exc: pytest.ExceptionInfo, *names: object) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, message
    return message


def _tree(root: Path, layout: dict[str, dict[str, int]], size: tuple[int, int] = (12, 10)) -> Path:
    """`layout`: split -> class -> number of (distinct, random-coloured) JPEGs."""
    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=95)
    return root


def _ffcv_cfg(run_dir: Path, cache_dir: Path, *overrides: str, config_name: str = "train"):
    return compose_config([*tiny_overrides(run_dir, cache_dir), "data=sample_ffcv", *overrides], config_name)


def _files_data(root: Path, train: Path, val: Path, *extra: str) -> list[str]:
    """data=ffcv over given files (no sample-set cache that would rewrite a damaged file)."""
    return [
        "data=ffcv",
        f"data.root={root}",
        f"data.train_beton={train}",
        f"data.val_beton={val}",
        "data.resolution=32",
        "data.batch_size=64",
        *extra,
    ]


def _batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for x, y in loader:
        images.append(x.clone())
        labels.append(y.clone())
    return torch.cat(images), torch.cat(labels)


@pytest.fixture(scope="session")
def betons(cache_dir: Path, sample_root: Path) -> tuple[Path, Path]:
    """The sample set's .beton files, written once (as data=sample_ffcv writes them)."""
    if not HAVE_FFCV:
        pytest.skip("ffcv is not installed")
    datamodule = build_datamodule(compose_config(["data=sample_ffcv", f"paths.cache_dir={cache_dir}"]))
    datamodule.prepare_data()
    return Path(datamodule.train_beton), Path(datamodule.val_beton)


# The sample set written at 36 px: at resolution 32 and crop ratio 0.875 the folder loader resizes the shorter side
# to floor(32 / 0.875) = 36 (no change) and crops the central 32; FFCV crops the central 32 / 36 of the shorter side
# and resizes it to 32 (no change). The same pixels, no resampling on either side.
SAMPLE_36 = [
    "data.sample_size=36",
    "data.root=${paths.cache_dir}/sample_digits_36",
    "data.resolution=32",
]
BETONS_36 = [
    "data.train_beton=${paths.cache_dir}/sample_digits_36_ffcv/train.beton",
    "data.val_beton=${paths.cache_dir}/sample_digits_36_ffcv/val.beton",
]


@pytest.fixture(scope="module")
def sample_ffcv(betons, cache_dir: Path):
    """A data=sample_ffcv module over the 36 px sample set, at 32 px (see SAMPLE_36)."""
    datamodule = build_datamodule(
        compose_config(
            ["data=sample_ffcv", f"paths.cache_dir={cache_dir}", *SAMPLE_36, *BETONS_36, "data.num_workers=1"]
        )
    )
    datamodule.setup("fit")
    yield datamodule
    datamodule.teardown()


# -- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_sample_ffcv_keeps_the_sample_sets_values() -> None:
    sample, sample_ffcv = compose_config(["data=sample"]), compose_config(["data=sample_ffcv"])
    assert sample_ffcv.augment == sample.augment  # the digits' own crop range and flip (augment=digits)
    sample, ffcv = sample.data, sample_ffcv.data
    for key, value in sample.items():
        if key not in ("_target_", "pin_memory", "persistent_workers"):
            assert ffcv[key] == value, key
    imagenet = compose_config(["data=imagenet"]).data
    imagenet_ffcv = compose_config(["data=imagenet_ffcv"]).data
    assert imagenet_ffcv.root == imagenet.root and imagenet_ffcv.num_classes == 1000
    assert imagenet_ffcv._target_ == "trainer.data.FFCVDataModule"


@pytest.mark.integration
def test_ffcv_missing_is_one_line_saying_what_to_install(tmp_path: Path, capsys, monkeypatch) -> None:
    """Both entry points that need ffcv, in process (runpy), with ffcv made unimportable."""
    for name in [m for m in sys.modules if m == "ffcv" or m.startswith("ffcv.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ffcv", None)  # as if ffcv were not installed
    monkeypatch.chdir(tmp_path)
    for script, args in (
        ("train.py", ["data=imagenet_ffcv", f"run_dir={tmp_path}/run", "trainer.accelerator=cpu"]),
        ("scripts/write_ffcv.py", [f"data.root={tmp_path}", f"out={tmp_path}/x.beton"]),
    ):
        code, _, err = run_script(script, *args, capsys=capsys, monkeypatch=monkeypatch)
        assert code == 2, err[-2000:]
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
        for needed in ("ffcv", "libturbojpeg0-dev", "libopencv-dev", "pkg-config", "pip install -e '.[ffcv]'"):
            assert needed in lines[0], lines[0]


@pytest.mark.system
@needs_ffcv
def test_missing_files_are_one_line(tmp_path: Path, cache_dir: Path) -> None:
    datamodule = build_datamodule(compose_config(["data=imagenet_ffcv", f"paths.data_dir={tmp_path}"]))
    with pytest.raises(DataError) as exc:
        _ = datamodule.classes
    _one_line(exc, tmp_path / "imagenet_ffcv" / "train.beton", "scripts/write_ffcv.py")


@pytest.mark.unit
@needs_ffcv
def test_ffcvs_plain_jitted_helpers_compile_into_numbas_disk_cache() -> None:
    """The typed-Dict functions ffcv's import compiles and QuasiRandom's order generator are compiled once and then
    loaded from numba's cache by each later process (the pipeline code, which holds ctypes pointers, cannot be)."""
    from ffcv.traversal_order import quasi_random
    from numba.typed import typeddict

    from trainer.data.ffcv import require_ffcv

    require_ffcv()
    order = np.zeros(6, dtype=np.int64)
    quasi_random.generate_order_inner(0, np.arange(6).reshape(2, 3), np.array([3, 3]), order, 2)
    assert sorted(order) == list(range(6))
    for dispatcher in (typeddict._make_dict, typeddict._setitem, quasi_random.generate_order_inner):
        where = dispatcher.stats.cache_path  # None where caching is off
        assert where and list(Path(where).glob(f"*{dispatcher.py_func.__name__}-*.nbi")), dispatcher


# -- writing and reading back --------------------------------------------------------------------------------


@pytest.mark.unit
@needs_ffcv
def test_the_sample_set_round_trips(betons, sample_root: Path) -> None:
    from trainer.data.ffcv import check_beton, sidecar_path
    from trainer.data.ffcv.format import read_layout

    classes = validate_layout(sample_root)
    for split, path in zip(("train", "val"), betons, strict=True):
        info = check_beton(path, verify=True)
        folder = ImageFolderDataset(sample_root / split, classes)
        assert info.classes == classes == [str(d) for d in range(10)]
        assert info.num_images == info.num_samples == len(folder) == {"train": 1437, "val": 360}[split]
        assert info.skipped == [] and info.write["write_mode"] == "raw"
        labels = read_layout(path)[2]["f1"]
        assert labels.tolist() == [label for _, label in folder.samples]  # same order, same labels
        index = json.loads(sidecar_path(path).read_text())
        assert index["classes"] == classes and index["split"] == split
        assert index["source"] == str((sample_root / split).resolve())


@pytest.mark.unit
@needs_ffcv
@pytest.mark.slow
def test_loaders_count_label_and_shape_like_the_folder_loader(sample_ffcv) -> None:
    sample_root = Path(sample_ffcv.root)
    classes = validate_layout(sample_root)
    val_folder = ImageFolderDataset(sample_root / "val", classes)
    images, labels = _batches(sample_ffcv.val_dataloader())
    assert labels.tolist() == [label for _, label in val_folder.samples]
    assert images.shape == (360, 3, 32, 32) and images.dtype == torch.float32
    train = sample_ffcv.train_dataloader()
    assert len(train) == 1437 // 64  # drop_last for training only
    images, labels = _batches(train)
    assert images.shape == (22 * 64, 3, 32, 32) and labels.dtype == torch.int64
    train_folder = ImageFolderDataset(sample_root / "train", classes)
    counts = np.bincount([label for _, label in train_folder.samples], minlength=10)
    got = np.bincount(labels.numpy(), minlength=10)
    assert (got <= counts).all() and got.sum() == 1408  # a random order without repeats (1437 - 29 dropped)
    again = _batches(train)[1]
    assert not torch.equal(labels, again)  # a new order every epoch


@pytest.mark.unit
@needs_ffcv
def test_cpu_pipeline_normalises_before_to_tensor(sample_ffcv) -> None:
    from ffcv.transforms import ToTensor, ToTorchImage

    from trainer.data.ffcv.ops import ExactNormalize

    ops = [type(op) for op in sample_ffcv._pipelines(False, torch.device("cpu"))["image"]]
    assert ops[1:] == [ExactNormalize, ToTensor, ToTorchImage]  # ffcv 1.0.2's planner hangs on the other order


@pytest.mark.unit
@needs_ffcv
def test_val_inputs_are_the_folder_loaders_bit_for_bit(sample_ffcv, cache_dir: Path) -> None:
    """Raw pixels and a crop that needs no resampling (SAMPLE_36): the FFCV validation batches equal the folder
    loader's exactly. On the 32 px set at 32 px the folder loader resizes to 36 and crops 32, FFCV crops 28 and
    resizes to 32: the same region, resampled differently (README, "FFCV")."""
    ffcv_images, _ = _batches(sample_ffcv.val_dataloader())
    folder = build_datamodule(compose_config(["data=sample", f"paths.cache_dir={cache_dir}", *SAMPLE_36]))
    folder.setup("validate")
    folder_images = torch.stack([folder.val_set[i][0] for i in range(len(folder.val_set))])
    assert torch.equal(ffcv_images, folder_images)


@pytest.mark.unit
@needs_ffcv
def test_eval_loader_reads_the_files_then_the_folders(sample_ffcv, cache_dir: Path, tmp_path: Path) -> None:
    """evaluate.py's data (prepare_eval, eval_dataloader): eval.split=val reads the val file, the training split the
    training file, any other split is a one-line error; a protocol with views of its own reads `root/<split>` as the
    folder loader does, and names the folder where it is missing."""
    from trainer.eval import Protocol
    from trainer.eval.protocols import collate_views

    def module(*extra: str):
        overrides = ["data=sample_ffcv", f"paths.cache_dir={cache_dir}", *SAMPLE_36, *BETONS_36, *extra]
        return build_datamodule(compose_config([*overrides, "data.num_workers=0"]))

    with pytest.raises(ConfigError, match=r"eval.split=test: FFCV data has a train and a val file"):
        module().prepare_eval("test")
    on_train = module()
    on_train.prepare_eval("train")
    assert on_train.val_beton == on_train.train_beton
    views = Protocol("ten_crop", resolution=32, crop_ratio=0.875).transform()
    on_val = module()
    on_val.prepare_eval("val")
    images, labels = next(iter(on_val.eval_dataloader(views, protocol="ten_crop", collate_fn=collate_views)))
    assert images.shape == (len(labels), 10, 3, 32, 32)
    no_folders = module("data.sample=false", f"data.root={tmp_path}")
    no_folders.prepare_eval("val")
    with pytest.raises(ConfigError, match=r"eval.protocol=ten_crop reads the image folders.* no 'val' folder"):
        no_folders.eval_dataloader(views, protocol="ten_crop")


@pytest.fixture(scope="module")
def ffcv_trained(betons, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """ResNet-18 trained three epochs on the sample set through FFCV (2 loader threads): (run directory, results).
    Read it, never write into it (copy_run). Its tests share an xdist_group, so that one pytest-xdist worker trains
    it once rather than each worker once."""
    run_dir = tmp_path_factory.mktemp("ffcv_trained") / "run"
    return run_dir, train(_ffcv_cfg(run_dir, cache_dir, "data.num_workers=2", "trainer.max_epochs=3"))


@pytest.mark.integration
@needs_ffcv
@pytest.mark.slow
@pytest.mark.xdist_group("ffcv_trained")  # one worker: the module fixture runs once
def test_training_with_sample_ffcv_learns(ffcv_trained, cache_dir: Path, tmp_path: Path) -> None:
    run_dir, results = ffcv_trained
    assert results["epochs"] == 3 and results["global_step"] == 3 * (1437 // 64)
    # One epoch from scratch (22 steps) is no test of learning: its loss rises and falls back to about ln(10) and
    # its top-1 is 11-40%. After three epochs top-1 was 90-92.5% in three runs (chance: 10%).
    assert results["top1"] > 50, results
    ckpt = copy_run(run_dir, tmp_path / "run", checkpoints_only=True) / "checkpoints" / "last.ckpt"
    cfg = _ffcv_cfg(tmp_path / "eval", cache_dir, f"ckpt={ckpt}", config_name="eval")
    assert evaluate(cfg, overrides=[f"ckpt={ckpt}"])["top1"] == results["top1"]  # the run's own last val


@pytest.mark.integration
@needs_ffcv
@pytest.mark.slow
@pytest.mark.xdist_group("ffcv_trained")  # one worker: the module fixture runs once
def test_same_checkpoint_same_top1_with_either_loader(ffcv_trained, cache_dir: Path, sample_ffcv, tmp_path: Path):
    """One checkpoint (the run above), evaluated by evaluate.py through each loader, comparing like with like: raw
    pixels, the same crop (SAMPLE_36)."""
    ckpt = copy_run(ffcv_trained[0], tmp_path / "run", checkpoints_only=True) / "checkpoints" / "last.ckpt"
    results = {}
    for data, extra in (("sample", SAMPLE_36), ("sample_ffcv", [*SAMPLE_36, *BETONS_36])):
        overrides = [f"ckpt={ckpt}", f"data={data}", *extra, f"eval.out={tmp_path}/{data}.json"]
        cfg = compose_config([*tiny_overrides(tmp_path / "eval", cache_dir), *overrides], "eval")
        results[data] = evaluate(cfg, overrides=overrides)
    folder, ffcv = results["sample"], results["sample_ffcv"]
    assert folder["images"] == ffcv["images"] == 360
    assert 20 < folder["top1"] < 100  # a trained, imperfect model: equality means something
    assert ffcv["top1"] == folder["top1"] and ffcv["top5"] == folder["top5"]
    assert ffcv["per_class_top1"] == folder["per_class_top1"] and ffcv["loss"] == folder["loss"]


# -- the loader --------------------------------------------------------------------------------------------------


@pytest.mark.unit
@needs_ffcv
def test_held_batches_are_not_overwritten(betons) -> None:
    """Lightning fetches the next batch before training on the current one. ffcv 1.0.2 recycles its buffers as if
    the consumer held one batch, so a bare Loader overwrites the batch being trained on; ours keeps one more."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader as FFCVLoader
    from ffcv.loader import OrderOption
    from ffcv.transforms import Squeeze, ToTensor

    from trainer.data.ffcv.format import read_layout
    from trainer.data.ffcv.loader import Loader

    val = betons[1]
    labels = torch.from_numpy(read_layout(val)[2]["f1"].astype(np.int64))
    mismatched = {}
    for cls in (FFCVLoader, Loader):
        loader = cls(
            str(val),
            batch_size=8,
            num_workers=1,
            order=OrderOption.SEQUENTIAL,
            drop_last=False,
            batches_ahead=1,
            pipelines={"image": None, "label": [IntDecoder(), ToTensor(), Squeeze(1)]},
        )
        batches = iter(loader)
        (held,) = next(batches)
        mismatched[cls] = 0
        for k, (current,) in enumerate(batches):
            time.sleep(0.01)  # "training" on `held` while the loader runs ahead
            mismatched[cls] += not torch.equal(held, labels[8 * k : 8 * k + 8])
            held = current
    assert mismatched[Loader] == 0
    assert mismatched[FFCVLoader] > 0  # if ffcv fixes this, the workaround in ffcv.loader.Loader can go


@pytest.mark.unit
@needs_ffcv
def test_buffers_are_reused_across_epochs_while_their_shapes_hold(sample_ffcv) -> None:
    """ffcv allocates every buffer afresh each epoch; ours keeps them while the pipeline's shapes hold (the same
    batches come out), and makes new ones when the decoder's output size changes (progressive resizing)."""
    loader = sample_ffcv.val_dataloader()

    def epoch() -> tuple[torch.Tensor, set[int]]:
        images, pointers = [], set()
        for x, _ in loader:
            pointers.add(x.untyped_storage().data_ptr())
            images.append(x.clone())
        return torch.cat(images), pointers

    first, first_pointers = epoch()
    second, second_pointers = epoch()
    assert torch.equal(first, second)
    assert second_pointers == first_pointers  # the same buffers served both epochs
    decoder = loader.pipeline_specs["image"].decoder
    decoder.output_size = (24, 24)
    resized, resized_pointers = epoch()
    assert resized.shape[-2:] == (24, 24) and not resized_pointers & first_pointers


@pytest.mark.unit
@needs_ffcv
def test_training_pipeline_compiles_once_and_reads_each_epochs_seed(sample_ffcv, tmp_path: Path) -> None:
    """The training decoder's crops and flips follow the epoch's seed, read by the compiled pipeline when it runs: the
    pipeline is compiled once for every epoch (ffcv's `recompile` compiled it again at each), an epoch read again
    gives the same images, another epoch other ones; a new output size (progressive resizing) compiles it again."""
    from ffcv.loader import OrderOption

    from trainer.data.ffcv.loader import Loader
    from trainer.data.ffcv.ops import epoch_seed

    pipelines = sample_ffcv._pipelines(True, torch.device("cpu"))
    decoder = sample_ffcv._train_decoder
    assert decoder is pipelines["image"][0]  # the sample set's augment: random-resized crops (digits: no flips)
    loader = Loader(
        str(sample_ffcv.train_beton),
        batch_size=16,
        num_workers=1,
        order=OrderOption.SEQUENTIAL,  # the same images in the same places every epoch: only the seed differs
        indices=list(range(32)),
        pipelines=pipelines,
        before_epoch=lambda epoch: setattr(decoder, "epoch_seed", epoch_seed(0, epoch)),
    )

    def read(epoch: int) -> tuple[torch.Tensor, object]:
        loader.next_epoch = epoch
        images = torch.cat([x.clone() for x, _ in loader])
        return images, loader.code

    first, code = read(0)
    second, second_code = read(1)
    again, again_code = read(0)
    assert code is second_code is again_code  # compiled once
    assert torch.equal(first, again) and not torch.equal(first, second)
    assert decoder.epoch_seed == epoch_seed(0, 0)
    decoder.output_size = (24, 24)
    resized, resized_code = read(0)
    assert resized.shape[-2:] == (24, 24) and resized_code is not code
    loader.close()


@pytest.mark.unit
@needs_ffcv
def test_device_path_on_the_cpu(sample_ffcv) -> None:
    """The CUDA pipeline (ToTensor -> ToDevice -> ToTorchImage -> normalise on the device, uint8 over the bus), run
    with the CPU as its device: the only check it gets without a GPU."""
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder
    from ffcv.transforms import ToDevice, ToTensor, ToTorchImage

    from trainer.data.ffcv.loader import Loader
    from trainer.data.ffcv.ops import DeviceNormalize

    cpu = torch.device("cpu")
    pipelines = sample_ffcv._pipelines(False, cpu)
    exact, _ = _batches(sample_ffcv.val_dataloader())
    decoder = pipelines["image"][0]
    for dtype in (torch.float32, torch.bfloat16):
        image = [decoder, ToTensor(), ToDevice(cpu, non_blocking=True), ToTorchImage(channels_last=True)]
        image.append(DeviceNormalize(MEAN, STD, dtype))
        assert [type(op) for op in image][1:] == [ToTensor, ToDevice, ToTorchImage, DeviceNormalize]
        assert isinstance(decoder, CenterCropRGBImageDecoder)
        loader = Loader(
            str(sample_ffcv.info("val").path),
            batch_size=64,
            num_workers=1,
            drop_last=False,
            pipelines={"image": image, "label": pipelines["label"]},
        )
        images, _ = _batches(loader)
        assert images.dtype == dtype and images.shape == exact.shape
        assert images.is_contiguous(memory_format=torch.channels_last)
        if dtype == torch.float32:
            assert torch.equal(images, exact)  # the same float32 arithmetic as torchvision's
        else:
            torch.testing.assert_close(images.float(), exact, atol=0.02, rtol=0.01)


@pytest.mark.unit
@needs_ffcv
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_pipeline_normalises_on_the_device(cache_dir: Path, betons) -> None:
    cfg = compose_config(["data=sample_ffcv", f"paths.cache_dir={cache_dir}", "data.device_dtype=bfloat16"])
    datamodule = build_datamodule(cfg)
    datamodule.loader_device = "cuda"
    images, labels = next(iter(datamodule.val_dataloader()))
    assert images.is_cuda and labels.is_cuda and images.dtype == torch.bfloat16
    assert images.is_contiguous(memory_format=torch.channels_last)
    datamodule.loader_device = "cpu"
    cpu_images, _ = next(iter(datamodule.val_dataloader()))
    torch.testing.assert_close(images.float().cpu(), cpu_images, atol=0.02, rtol=0.01)


def _shard(rank: int, world_size: int, port: int, cache_dir: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        datamodule = build_datamodule(compose_config(["data=sample_ffcv", f"paths.cache_dir={cache_dir}"]))
        datamodule.trainer = SimpleNamespace(
            world_size=2,
            global_rank=rank,
            current_epoch=0,
            strategy=SimpleNamespace(root_device=torch.device("cpu")),
            precision="32",
        )
        val = torch.cat([y.clone() for _, y in datamodule.val_dataloader()])
        train_loader = datamodule.train_dataloader()
        torch.save({"val": val, "train_batches": len(train_loader), "order": str(datamodule.order)}, out)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.unit
@needs_ffcv
@pytest.mark.slow
def test_distributed_ranks_read_disjoint_shards(cache_dir: Path, betons, tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    from trainer.data.ffcv.format import read_layout

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outs = [str(tmp_path / f"rank{r}.pt") for r in range(2)]
    context = mp.get_context("spawn")
    procs = [context.Process(target=_shard, args=(r, 2, port, str(cache_dir), outs[r])) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
        assert p.exitcode == 0
    ranks = [torch.load(o) for o in outs]
    labels = read_layout(betons[1])[2]["f1"].tolist()
    # val: sample i goes to rank i % 2, in order, unpadded; train: ffcv's random order sharded by rank
    assert ranks[0]["val"].tolist() == labels[0::2] and ranks[1]["val"].tolist() == labels[1::2]
    assert ranks[0]["train_batches"] == ranks[1]["train_batches"] == 719 // 32  # 64 global = 32 per rank


@pytest.mark.system
@needs_ffcv
@pytest.mark.slow
def test_ddp_val_top1_equals_single_process_evaluation(cache_dir: Path, sample_root: Path, betons, tmp_path: Path):
    """2 gloo processes through `python train.py` reading a 359-image val .beton: the top-1/top-5 DDP reports
    equals evaluate.py's (one process, every image once) on the same checkpoint, as with the folder loader."""
    from tests.helpers import ddp_args, odd_val_root, run_train
    from trainer.data.ffcv import WriteOptions, write_beton

    root = odd_val_root(sample_root, tmp_path / "data")
    val = tmp_path / "val.beton"
    write_beton(root / "val", val, validate_layout(root), WriteOptions(write_mode="raw", max_resolution=None))
    data = [*_files_data(root, betons[0], val, "data.num_workers=1"), "data.num_classes=10"]
    run_dir = tmp_path / "run"
    proc = run_train(ddp_args(run_dir, cache_dir, data), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == 3
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    overrides = [f"ckpt={ckpt}", *data]
    cfg = compose_config([*tiny_overrides(tmp_path / "eval", cache_dir), *overrides], "eval")
    single = evaluate(cfg, overrides=overrides)
    assert single["images"] == 359
    assert single["top1"] == pytest.approx(results["top1"], abs=1e-9)
    assert single["top5"] == pytest.approx(results["top5"], abs=1e-9)
    correct = round(results["top1"] * 359 / 100)  # a count over 360 (one image twice) could not give this value
    assert results["top1"] == pytest.approx(100 * correct / 359, abs=1e-4)


# -- progressive resizing --------------------------------------------------------------------------------------


def _ffcv_get_resolution(epoch, min_res, max_res, end_ramp, start_ramp):
    # ffcv-imagenet train_imagenet.py, verbatim but for the names
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    return int(np.round(interp[0] / 32)) * 32


@pytest.mark.unit
@pytest.mark.parametrize("epochs,start,end", [(16, 11, 13), (24, 17, 20), (32, 23, 27), (40, 29, 34), (88, 65, 76)])
def test_progressive_resizing_follows_ffcvs_rule(epochs: int, start: int, end: int) -> None:
    callback = ProgressiveResizing(min_res=160, max_res=192, start_epoch=start, end_epoch=end)
    ours = [callback.resolution(e) for e in range(epochs)]
    assert ours == [_ffcv_get_resolution(e, 160, 192, end, start) for e in range(epochs)]
    assert ours[0] == 160 and ours[-1] == 192
    with pytest.raises(ConfigError):
        ProgressiveResizing(min_res=200, max_res=192)


class RecordResolution(L.Callback):
    """Records (epoch, input size) of every training batch, and the labels of each epoch's first batch."""

    seen: list[tuple[int, int]] = []
    first_labels: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        RecordResolution.seen.append((trainer.current_epoch, int(batch[0].shape[-1])))
        if batch_idx == 0:
            RecordResolution.first_labels[trainer.current_epoch] = batch[1].tolist()


@pytest.mark.integration
@pytest.mark.parametrize("data", [pytest.param("sample_ffcv", marks=pytest.mark.slow), "sample"])
def test_progressive_resizing_changes_the_training_size_each_epoch(
    data: str, cache_dir: Path, sample_root: Path, tmp_path: Path
) -> None:
    if data.endswith("_ffcv") and not HAVE_FFCV:
        pytest.skip("ffcv is not installed")
    ramp = [
        "callbacks=progressive_resizing",
        "callbacks.progressive_resizing.min_res=32",
        "callbacks.progressive_resizing.max_res=48",
        "callbacks.progressive_resizing.start_epoch=0",
        "callbacks.progressive_resizing.end_epoch=2",
        "callbacks.progressive_resizing.step=8",
        "+callbacks.record._target_=tests.test_ffcv.RecordResolution",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        f"data={data}",
        "data.num_workers=1",  # the folder loader: one persistent worker process must see each change
    ]
    run_dir = tmp_path / "run"
    RecordResolution.seen, RecordResolution.first_labels = [], {}
    train(compose_config([*tiny_overrides(run_dir, cache_dir), *ramp, "trainer.max_epochs=2"]))
    # resumed: the restored epoch's resolution holds from its first batch
    train(compose_config([*tiny_overrides(run_dir, cache_dir), *ramp, "trainer.max_epochs=3", "resume=auto"]))
    assert RecordResolution.seen == [(0, 32), (0, 32), (1, 40), (1, 40), (2, 48), (2, 48)]
    if data == "sample_ffcv":  # ffcv's order follows the epoch: the resumed epoch 2 reads epoch 2's order
        from trainer.data.ffcv.format import read_layout

        datamodule = build_datamodule(compose_config(["data=sample_ffcv", f"paths.cache_dir={cache_dir}"]))
        loader = datamodule._loader("train")
        loader.next_epoch = 2
        labels = read_layout(Path(datamodule.train_beton))[2]["f1"]
        assert RecordResolution.first_labels[2] == labels[loader.next_traversal_order()[:64]].tolist()
        datamodule.teardown()
    assert set(logged(run_dir, "train/resolution")) == {32.0, 40.0, 48.0}


# -- batched augmentations (no ffcv needed) -----------------------------------------------------------------------


def _photos(n: int = 16, size: int = 24, same: bool = True) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    one = torch.randint(0, 256, (1 if same else n, 3, size, size), generator=generator, dtype=torch.uint8)
    return one.expand(n, -1, -1, -1).contiguous() if same else one


@pytest.mark.unit
def test_batch_augment_without_augmentations_is_torchvisions_normalisation() -> None:
    import torchvision.transforms as T

    images = _photos(4, same=False)
    out = BatchAugment({}, resolution=24, mean=MEAN, std=STD)(images)
    expected = torch.stack(
        [T.Normalize(MEAN, STD)(T.ToTensor()(Image.fromarray(i.permute(1, 2, 0).numpy()))) for i in images]
    )
    assert torch.equal(out, expected)
    assert not needs_batch_augment({"crop": "random_resized", "hflip": 0.5})
    assert needs_batch_augment({"lighting_std": 0.1}) and needs_batch_augment({"auto_augment": "original"})


@pytest.mark.unit
def test_lighting_is_one_pca_offset_per_image() -> None:
    from trainer.data.transforms import IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC

    torch.manual_seed(0)
    images = torch.full((4000, 3, 2, 2), 128, dtype=torch.uint8)
    augment = BatchAugment({"lighting_std": 0.1}, resolution=2, mean=(0, 0, 0), std=(1, 1, 1))
    shift = augment(images) - 128 / 255
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)  # one RGB offset per image
    alpha = (shift[:, :, 0, 0] @ torch.tensor(IMAGENET_PCA_EIGVEC)) / torch.tensor(IMAGENET_PCA_EIGVAL)
    assert alpha.std(0).tolist() == pytest.approx([0.1] * 3, rel=0.06)  # alpha_i ~ N(0, 0.1), per image


@pytest.mark.unit
@pytest.mark.parametrize("name", ["AutoContrast", "Equalize", "Invert", "Posterize", "Solarize", "SolarizeAdd"])
def test_autoaugment_ops_match_timms_pil_ops(name: str) -> None:
    from timm.data.auto_augment import _HPARAMS_DEFAULT, LEVEL_TO_ARG, NAME_TO_OP

    images = (_photos(3, size=20, same=False).float() * 0.6 + 40).to(torch.uint8)  # not the full range
    args = LEVEL_TO_ARG[name](5, _HPARAMS_DEFAULT) if LEVEL_TO_ARG[name] else ()
    ours = _apply_op(name, images, tuple(args), (128, 128, 128))
    for image, got in zip(images, ours, strict=True):
        pil = NAME_TO_OP[name](Image.fromarray(image.permute(1, 2, 0).numpy()), *args)
        expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
        # autocontrast's scaling is rounded differently by PIL (integer LUT) and torchvision (float): at most 1
        assert (got.int() - expected.int()).abs().max() <= (1 if name == "AutoContrast" else 0), name


@pytest.mark.unit
def test_geometric_ops_follow_pils_transform() -> None:
    from timm.data.auto_augment import NAME_TO_OP

    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    smooth = torch.stack([xs * 8, ys * 8, (xs + ys) * 4]).clamp(0, 255).to(torch.uint8)[None]  # bilinear-friendly
    for name, arg in (
        ("ShearX", 0.2),
        ("ShearY", -0.1),
        ("TranslateX", 5.0),
        ("TranslateYRel", -0.2),
        ("Rotate", 20.0),
    ):
        got = _apply_op(name, smooth, (arg,), (128, 128, 128))[0].float()
        pil = NAME_TO_OP[name](
            Image.fromarray(smooth[0].permute(1, 2, 0).numpy()), arg, resample=Image.BILINEAR, fillcolor=(128,) * 3
        )
        expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()
        difference = (got - expected)[:, 3:-3, 3:-3].abs()  # away from the fill edge (sub-pixel differences there)
        assert difference.mean() < 2, name


@pytest.mark.unit
def test_autoaugment_draws_a_policy_per_sample() -> None:
    random.seed(0)
    images = _photos(64)
    augment = BatchAugment({"auto_augment": "original"}, resolution=24, mean=MEAN, std=STD)
    out = augment(images)
    distinct = {tuple(o.flatten()[::7].tolist()) for o in out}
    assert out.shape == (64, 3, 24, 24) and out.dtype == torch.float32
    assert len(distinct) > 16  # the same image, many different outcomes in one batch
    assert torch.equal(images, _photos(64))  # the input batch is not modified


@pytest.mark.unit
def test_color_jitter_draws_factors_and_order_per_sample() -> None:
    import torchvision.transforms.v2.functional as TF

    torch.manual_seed(0)
    images = _photos(32)
    out = BatchAugment({"color_jitter": [0.4, 0.4, 0.4, 0.1]}, resolution=24, mean=MEAN, std=STD)(images)
    assert len({tuple(o.flatten()[::5].tolist()) for o in out}) == 32
    x = images[:4].float() / 255
    for kind, fn in enumerate((TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)):
        factor = 0.1 if kind == 3 else 1.3
        torch.testing.assert_close(_jitter(kind, x.clone(), torch.full((4,), factor)), fn(x, factor), atol=1e-5, rtol=0)


@pytest.mark.unit
@needs_ffcv
@pytest.mark.slow
def test_recipes_augmentations_run_after_loading(cache_dir: Path, betons) -> None:
    cfg = compose_config(
        ["data=sample_ffcv", f"paths.cache_dir={cache_dir}", "augment=autoaugment", "augment.lighting_std=0.1"]
    )
    datamodule = build_datamodule(cfg)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.dtype == torch.uint8  # the pipeline hands over uint8 ...
    out, same = datamodule.on_after_batch_transfer((images, labels), 0)  # ... and the batch is augmented here
    assert out.dtype == torch.float32 and out.shape == images.shape and same is labels
    x, y = next(iter(datamodule.val_dataloader()))
    assert datamodule.on_after_batch_transfer((x, y), 0)[0] is x  # validation is normalised by the pipeline
    datamodule.teardown()


def _gradient_set(root: Path, count: int = 48) -> Path:
    """One 64 x 48 PNG repeated: red = 3 x column, green = 5 x row (the crop's location can be read back)."""
    ys, xs = np.mgrid[0:48, 0:64]
    pixels = np.stack([3 * xs, 5 * ys, np.zeros_like(xs)], -1).astype(np.uint8)
    for split in ("train", "val"):
        folder = root / split / "a"
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.mark.unit
@needs_ffcv
def test_scale_jitter_and_squash_random_crops_as_decoders(tmp_path: Path) -> None:
    from ffcv.loader import OrderOption
    from ffcv.transforms import ToTensor

    from trainer.data.ffcv import WriteOptions, write_beton
    from trainer.data.ffcv.loader import Loader
    from trainer.data.ffcv.ops import ScaleJitterRGBImageDecoder, SquashRandomCropRGBImageDecoder

    root = _gradient_set(tmp_path / "grad")
    out = tmp_path / "grad.beton"
    write_beton(
        root / "train", out, ["a"], WriteOptions(write_mode="raw", max_resolution=None, num_workers=1), progress=False
    )

    def extents(decoder) -> np.ndarray:
        loader = Loader(
            str(out),
            batch_size=48,
            num_workers=1,
            order=OrderOption.SEQUENTIAL,
            drop_last=False,
            pipelines={"image": [decoder, ToTensor()], "label": None},
        )
        (images,) = next(iter(loader))
        images = images.numpy().astype(float)  # (n, 16, 16, 3)
        width = (images[:, :, -1, 0] - images[:, :, 0, 0]).mean(1) / 3 * 16 / 15  # columns spanned
        height = (images[:, -1, :, 1] - images[:, 0, :, 1]).mean(1) / 5 * 16 / 15  # rows spanned
        return np.stack([width, height], 1)

    # VGG's S in [256, 512] at 224 px is [18, 37] at 16 px: squares of 48 x 16 / S = 20.8 .. 42.7 source pixels
    jitter = extents(ScaleJitterRGBImageDecoder((16, 16), 18, 37, 16))
    assert np.allclose(jitter[:, 0], jitter[:, 1], atol=1.5)  # square
    assert jitter.min() > 19 and jitter.max() < 44.5 and jitter[:, 0].std() > 3
    # squashed AlexNet crop, 224 of 256 at 16 px: 16 of 18 of each side, i.e. 57 x 43 of 64 x 48
    alexnet = extents(SquashRandomCropRGBImageDecoder((16, 16), 18, 16))
    assert np.allclose(alexnet, [[57, 43]], atol=1.5)


# -- bad input ---------------------------------------------------------------------------------------------------


@pytest.fixture()
def copies(betons, tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the sample set's files and class indexes, free to damage."""
    import shutil

    from trainer.data.ffcv import sidecar_path

    out = []
    for path in betons:
        copy = tmp_path / "files" / path.name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(path, copy)
        shutil.copy(sidecar_path(path), sidecar_path(copy))
        out.append(copy)
    return out[0], out[1]


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "header":
        data[0:2] = b"\x07\x00"  # version 7
        path.write_bytes(data)
    elif how == "metadata":
        label = 24 + 2 * 1041 + 16  # header, two field descriptors, then sample 0: its label
        data[label : label + 4] = b"\xff\xff\xff\x7f"
        path.write_bytes(data)
    elif how == "not a beton":
        path.write_bytes(os.urandom(len(data)))
    elif how == "no index":
        from trainer.data.ffcv import sidecar_path

        sidecar_path(path).unlink()


@pytest.mark.integration
@needs_ffcv
@pytest.mark.parametrize("how", ["truncated", "header", "metadata", "not a beton", "no index"])
def test_a_damaged_beton_is_one_line_naming_it(how: str, copies, sample_root: Path, tmp_path: Path, capsys) -> None:
    from trainer.cli import EXIT_USER_ERROR, user_errors
    from trainer.data.ffcv import check_beton

    train_file, val_file = copies
    _damage(val_file, how)
    with pytest.raises(DataError) as exc:
        check_beton(val_file)
    _one_line(exc, val_file)
    cfg = compose_config([*tiny_overrides(tmp_path / "run", tmp_path), *_files_data(sample_root, train_file, val_file)])
    with pytest.raises(SystemExit) as exit_info, user_errors():
        train(cfg)
    assert exit_info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and str(val_file) in err[-1]
    assert not any("Traceback" in line or "numba" in line for line in err)


@pytest.mark.unit
@needs_ffcv
def test_payload_corruption_is_caught_by_verify(copies, sample_root: Path) -> None:
    from trainer.data.ffcv import check_beton

    _, val_file = copies
    data = bytearray(val_file.read_bytes())
    data[3 << 20] ^= 0xFF  # a pixel in the data pages: the layout is intact
    val_file.write_bytes(data)
    check_beton(val_file)  # the layout checks pass ...
    with pytest.raises(DataError) as exc:
        check_beton(val_file, verify=True)  # ... data.verify=true reads the whole file
    _one_line(exc, val_file, "sha256")


@pytest.mark.unit
@needs_ffcv
def test_a_different_class_mapping_is_one_line(betons, copies, sample_root: Path, tmp_path: Path) -> None:
    from trainer.data.ffcv import WriteOptions, write_beton

    train_file, val_file = copies
    # data.root whose class folders are other names than the files were written with
    other = _tree(tmp_path / "other", {"train": {c: 1 for c in "abcdefghij"}, "val": {c: 1 for c in "abcdefghij"}})
    datamodule = build_datamodule(compose_config(_files_data(other, train_file, val_file)))
    with pytest.raises(DataError) as exc:
        _ = datamodule.classes
    _one_line(exc, train_file, f"data.root '{other}'", "different class mapping")
    # a val file written with another mapping than the train file
    two = _tree(tmp_path / "two", {"train": {"x": 2, "y": 2}, "val": {"x": 2, "y": 2}})
    odd = tmp_path / "odd.beton"
    write_beton(two / "val", odd, ["x", "y"], WriteOptions(write_mode="raw", num_workers=1), progress=False)
    datamodule = build_datamodule(compose_config(_files_data(tmp_path / "absent", train_file, odd)))
    with pytest.raises(DataError) as exc:
        _ = datamodule.classes
    _one_line(exc, odd, train_file)
    # another class count than the config says
    datamodule = build_datamodule(compose_config(_files_data(sample_root, train_file, val_file, "data.num_classes=5")))
    with pytest.raises(DataError) as exc:
        _ = datamodule.classes
    _one_line(exc, train_file, "data.num_classes=5")


@pytest.fixture()
def corrupt_source(tmp_path: Path) -> Path:
    root = _tree(tmp_path / "src", {"train": {"a": 3, "b": 3}, "val": {"a": 3, "b": 3}})
    (root / "val" / "a" / "001.jpg").write_bytes(b"not a jpeg at all" * 20)
    return root


@pytest.mark.unit
@needs_ffcv
def test_undecodable_source_images_are_skipped_counted_and_listed(corrupt_source: Path, tmp_path: Path) -> None:
    from trainer.data.ffcv import WriteOptions, check_beton, skipped_path, write_beton

    root, out = corrupt_source, tmp_path / "val.beton"
    bad = root / "val" / "a" / "001.jpg"
    result = write_beton(root / "val", out, ["a", "b"], WriteOptions(write_mode="jpg", num_workers=2), progress=False)
    assert result.images == 5 and [p for p, _ in result.skipped] == [str(bad)]
    assert "skipped 1 undecodable image(s)" in result.summary()
    listed = skipped_path(out).read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith(f"{bad}\tcannot decode image '{bad}'")
    info = check_beton(out)
    assert info.skipped == [1] and info.num_images == 5
    train_out = tmp_path / "train.beton"
    write_beton(root / "train", train_out, ["a", "b"], WriteOptions(write_mode="raw", num_workers=1), progress=False)
    datamodule = build_datamodule(compose_config(_files_data(root, train_out, out, "data.resolution=8")))
    _, labels = _batches(datamodule.val_dataloader())
    assert labels.tolist() == [0, 0, 1, 1, 1]  # the placeholder of the bad image is never read
    datamodule.teardown()


@pytest.mark.unit
@needs_ffcv
def test_undecodable_source_image_fails_the_write_when_asked(corrupt_source: Path, tmp_path: Path) -> None:
    from trainer.data.ffcv import WriteOptions, write_beton

    out = tmp_path / "out" / "val.beton"
    with pytest.raises(DataError) as exc:
        write_beton(corrupt_source / "val", out, ["a", "b"], WriteOptions(on_bad_image="fail"), progress=False)
    _one_line(exc, corrupt_source / "val" / "a" / "001.jpg", out)
    assert list(out.parent.iterdir()) == []  # nothing left, not even a partial file


@pytest.mark.unit
@needs_ffcv
def test_out_of_disk_leaves_no_file_that_looks_valid(corrupt_source: Path, tmp_path: Path, monkeypatch) -> None:
    from ffcv.memory_allocator import MemoryAllocator

    from trainer.data.ffcv import WriteOptions, write_beton

    real = MemoryAllocator.flush_page

    def disk_full(self) -> None:  # in the forked writer processes, once the second page is written
        if self.my_page >= 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self)

    monkeypatch.setattr(MemoryAllocator, "flush_page", disk_full)
    big = _tree(tmp_path / "big", {"train": {"a": 40, "b": 40}}, size=(160, 120))  # > two 2 MiB pages raw
    out = tmp_path / "out" / "train.beton"
    options = WriteOptions(write_mode="raw", max_resolution=None, page_size=1 << 21, num_workers=2, chunk_size=10)
    with pytest.raises(DataError) as exc:
        write_beton(big / "train", out, ["a", "b"], options, progress=False)
    _one_line(exc, out, "No space left on device", "partial file was removed")
    assert list(out.parent.iterdir()) == []


@pytest.mark.system
@needs_ffcv
@pytest.mark.slow
def test_write_cli_end_to_end_and_a_real_write_failure(corrupt_source: Path, tmp_path: Path, capsys, monkeypatch):
    """scripts/write_ffcv.py as a user runs it; its refusal to overwrite (in process); then with a file-size limit,
    so the kernel refuses the writes (EFBIG, the way a full disk refuses them with ENOSPC)."""
    out = tmp_path / "files" / "val.beton"
    args = [PYTHON, str(ROOT / "scripts" / "write_ffcv.py"), f"data.root={corrupt_source}", "split=val", f"out={out}"]
    proc = subprocess.run([*args, "num_workers=2"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"wrote 5 images to {out}" in proc.stdout and "skipped 1 undecodable image(s)" in proc.stdout
    assert "images/s" in proc.stderr  # the progress bar
    code, _, err = run_script(*args[1:], capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "overwrite=true" in err.strip().splitlines()[-1], err

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))

    big = _tree(tmp_path / "big", {"train": {"a": 30, "b": 30}, "val": {"a": 1, "b": 1}}, size=(200, 150))
    out = tmp_path / "limited" / "train.beton"
    args = [PYTHON, str(ROOT / "scripts" / "write_ffcv.py"), f"data.root={big}", f"out={out}", "write_mode=raw"]
    proc = subprocess.run(
        [*args, "page_size=2097152", "num_workers=2", "chunk_size=5"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        preexec_fn=limit_file_size,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot write '{out}'") and "File too large" in line, line
    assert list(out.parent.iterdir()) == []


@pytest.mark.unit
def test_bad_write_options_name_the_key() -> None:
    from trainer.data.ffcv import WriteOptions

    for kwargs, key in (
        ({"write_mode": "png"}, "write_mode"),
        ({"max_side": "middle"}, "max_side"),
        ({"page_size": 3 << 20}, "page_size"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"on_bad_image": "ignore"}, "on_bad_image"),
    ):
        with pytest.raises(ConfigError, match=key):
            WriteOptions(**kwargs)
    with pytest.raises(ConfigError, match="unknown"):
        WriteOptions.from_mapping({"quality": 90})


@pytest.mark.unit
def test_recipe_uses_progressive_resizing() -> None:
    cfg = compose_config(["recipe=resnet50_ffcv", "model=resnet50"])
    ramp = cfg.callbacks.progressive_resizing
    assert (ramp.min_res, ramp.max_res, ramp.start_epoch, ramp.end_epoch) == (160, 192, 11, 13)
    assert OmegaConf.select(cfg, "callbacks.checkpoint") is not None  # the default callbacks stay


# -- the loader benchmark ----------------------------------------------------------------------------------------


@pytest.mark.system
@needs_ffcv
@pytest.mark.slow
def test_loader_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    """benchmarks/loaders.py on a few generated images: every side (each in a process of its own) measures, and the
    ratios it reports are those of its medians."""
    out = tmp_path / "loaders.json"
    args = ["--images", "48", "--batch-size", "8", "--workers", "1", "--rounds", "1", "--epochs", "2"]
    args += ["--fresh-buffers", "--keep", str(tmp_path / "work"), "--json", str(out)]
    proc = subprocess.run(
        [PYTHON, "benchmarks/loaders.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rates, medians = report["images_per_sec"]["1"], report["medians"]["1"]
    assert set(rates) == {"folder", "ffcv", "ours", "ours-fresh"}
    assert all(len(r) == 2 and min(r) > 0 for r in rates.values()), rates
    assert report["ffcv_over_folder"] == pytest.approx(medians["ffcv"] / medians["folder"])
    assert report["ours_over_ffcv"] == pytest.approx(medians["ours"] / medians["ffcv"])
    assert report["beton"]["bytes"] > 0 and report["beton"]["source_bytes"] > 0
    assert "generated JPEGs" in report["images"] and "at 1 workers: ffcv/folder" in proc.stdout
