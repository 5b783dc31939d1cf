"""CIFAR: the papers' networks timm lacks (ResNet-20...1202, DenseNet(-BC), ResNeXt-29) at their papers' parameter
counts, the data module on generated archives in the python-version pickle format (labels, class names, split sizes,
the padding crop, the val split, damaged archives), the CIFAR recipes against the papers, a real training run per data
set, the FFCV path, and the report's paper figure for a CIFAR run."""

from __future__ import annotations

import importlib.util
import io
import math
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import ROOT, compose_config, tiny_overrides
from trainer.builders import build_datamodule, build_model
from trainer.data.cifar import CifarArchive, load_split
from trainer.errors import ConfigError, DataError
from trainer.models import create_model, get_entry, list_models
from trainer.models.complexity import meta_model
from trainer.train import train

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
N_PER_BATCH, N_TEST = 60, 100  # CIFAR-10: 5 x 60 training images, 100 test images
N100_TRAIN, N100_TEST = 500, 200  # CIFAR-100: 5 training / 2 test images a class

# Parameters in millions as the papers print them, at 10 classes: He et al. 2016 Table 6; Huang et al. 2017 Table 2;
# Xie et al. 2017 Table 7.
PAPER_PARAMS_M = {
    "resnet20_cifar": 0.27,
    "resnet32_cifar": 0.46,
    "resnet44_cifar": 0.66,
    "resnet56_cifar": 0.85,
    "resnet110_cifar": 1.7,
    "resnet1202_cifar": 19.4,
    "densenet40_k12_cifar": 1.0,
    "densenet_bc100_k12_cifar": 0.8,
    "densenet_bc250_k24_cifar": 15.3,
    "densenet_bc190_k40_cifar": 25.6,
    "resnext29_8x64d_cifar": 34.4,
    "resnext29_16x64d_cifar": 68.1,
}
# C10+ test error (%) the papers report (same tables), checked in the catalogue and the recipes
PAPER_C10_PLUS = {
    "resnet110_cifar": 6.43,
    "resnet1202_cifar": 7.93,
    "densenet_bc100_k12_cifar": 4.51,
    "densenet_bc190_k40_cifar": 3.46,
    "resnext29_8x64d_cifar": 3.65,
    "resnext29_16x64d_cifar": 3.58,
    "preact_resnet164_cifar": 5.46,
    "wide_resnet28_10_cifar": 3.89,
    "fractalnet20_cifar": 4.60,
}


# --- generated archives in the python-version format ---------------------------------------------------------------


def _class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """N x 3072 uint8 rows (R plane, G plane, B plane): a colour per class (levels 25..225) plus a little noise, so a
    network can learn the classes in a few steps."""
    levels = np.stack([labels % 5, (labels // 5) % 5, (labels // 25) % 5], 1) * 50 + 25  # N x 3
    planes = np.repeat(levels[:, :, None], 1024, axis=2).astype(np.int16)  # N x 3 x 1024
    planes += rng.integers(-12, 13, planes.shape, dtype=np.int16)
    return np.clip(planes, 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def _pickled(obj: dict) -> bytes:
    return pickle.dumps(obj, protocol=2)  # the real files are Python 2 pickles (protocol 2)


def cifar10_files(seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    files = {}
    for name, n in [*((f"data_batch_{i}", N_PER_BATCH) for i in range(1, 6)), ("test_batch", N_TEST)]:
        labels = rng.permutation(np.arange(n) % 10)
        files[name] = _pickled(
            {
                "batch_label": f"{name} of 5",
                "labels": labels.tolist(),
                "data": _class_images(labels, rng),
                "filenames": [f"img_{i}.png" for i in range(n)],
            }
        )
    files["batches.meta"] = _pickled(
        {"num_cases_per_batch": N_PER_BATCH, "label_names": CIFAR10_NAMES, "num_vis": 3072}
    )
    return files


def cifar100_files(seed: int = 1) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    files = {}
    for name, n in (("train", N100_TRAIN), ("test", N100_TEST)):
        fine = rng.permutation(np.arange(n) % 100)
        files[name] = _pickled(
            {
                "filenames": [f"img_{i}.png" for i in range(n)],
                "batch_label": f"{name}ing batch 1 of 1",
                "fine_labels": fine.tolist(),
                "coarse_labels": (fine // 5).tolist(),
                "data": _class_images(fine, rng),
            }
        )
    fine_names = [f"fine_{i:02d}" for i in range(100)]
    files["meta"] = _pickled({"fine_label_names": fine_names, "coarse_label_names": [f"coarse_{i}" for i in range(20)]})
    return files


def write_tar(path: Path, folder: str, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_folder(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10 as downloaded: <root>/cifar-10-python.tar.gz."""
    root = tmp_path_factory.mktemp("cifar10")
    write_tar(root / "cifar-10-python.tar.gz", "cifar-10-batches-py", cifar10_files())
    return root


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-100 extracted: <root>/cifar-100-python/{train,test,meta}."""
    root = tmp_path_factory.mktemp("cifar100")
    write_folder(root / "cifar-100-python", cifar100_files())
    return root


def _data_cfg(tmp_path: Path, data: str, root: Path, *overrides: str):
    return compose_config(
        [*tiny_overrides(tmp_path / "run", tmp_path / "cache"), f"data={data}", f"data.root={root}", *overrides]
    )


def _datamodule(tmp_path: Path, data: str, root: Path, *overrides: str):
    cfg = _data_cfg(tmp_path, data, root, "model=resnet20_cifar", *overrides)
    module = build_datamodule(cfg)
    module.setup("fit")
    return module


# --- networks --------------------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_network_has_its_papers_parameter_count_and_32px_output(name: str) -> None:
    model = meta_model(name, num_classes=10)  # meta device: ResNeXt-29 16x64d allocates nothing
    params = sum(p.numel() for p in model.parameters())
    printed = PAPER_PARAMS_M[name]
    decimals = len(str(printed).split(".")[1])
    # within 2%, or the same figure at the paper's precision (DenseNet-BC-100's 0.769 M is Table 2's "0.8M")
    assert params / 1e6 == pytest.approx(printed, rel=0.02) or round(params / 1e6, decimals) == printed, params
    out = model(torch.empty(2, 3, 32, 32, device="meta"))
    assert out.shape == (2, 10)
    entry = get_entry(name)
    assert entry.resolution == 32 and entry.crop_ratio == 1.0 and entry.source == "own"
    assert [i["reduction"] for i in model.feature_info] == [1, 2, 4]  # three stages at 32, 16, 8 px (test_models)


@pytest.mark.unit
def test_resnet_cifar_is_6n_plus_2_with_parameter_free_shortcuts() -> None:
    """He et al. count 6n + 2 weighted layers; option A adds no parameter, so every convolution is a 3x3."""
    for depth in (20, 56, 110):
        model = meta_model(f"resnet{depth}_cifar", num_classes=10)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(c.kernel_size == (3, 3) for c in convs)
        assert len(convs) + 1 == depth  # + the classifier
        assert [c.out_channels for c in convs][:: (depth - 2) // 3][:3] == [16, 16, 32]


@pytest.mark.unit
def test_option_a_shortcut_subsamples_and_pads_with_zeros() -> None:
    model = create_model("resnet20_cifar", num_classes=10)
    shortcut = model.stages[1][0].shortcut
    x = torch.randn(2, 16, 32, 32)
    y = shortcut(x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and not y[:, 16:].any()


@pytest.mark.unit
def test_cifar_models_are_listed_with_their_papers_errors() -> None:
    names = set(list_models("*cifar*"))
    assert set(PAPER_PARAMS_M) | set(PAPER_C10_PLUS) <= names
    for name, error in PAPER_C10_PLUS.items():
        assert get_entry(name).cifar_error["C10+"] == pytest.approx(error), name
    assert get_entry("densenet40_k12_cifar").cifar_error == {"C10": 7.00, "C10+": 5.24, "C100": 27.55, "C100+": 24.42}


CIFAR_NETWORKS = [name for name in list_models() if get_entry(name).cifar_error]


@pytest.mark.unit
@pytest.mark.parametrize("name", CIFAR_NETWORKS)
def test_catalogue_counts_cifar_networks_at_10_classes(name: str) -> None:
    """entry.cifar_params is the network built for CIFAR-10, as the papers' tables count; entry.params at 1000."""
    entry = get_entry(name)
    assert entry.cifar_params == sum(p.numel() for p in meta_model(name, num_classes=10).parameters())
    assert entry.params == sum(p.numel() for p in meta_model(name).parameters())


@pytest.mark.unit
def test_listing_shows_cifar_networks_at_10_classes_with_their_papers_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m trainer.models '*cifar*'` (a pipe: 80 columns): each network's row holds its 10-class parameter
    count and the paper's C10 / C10+ / C100 / C100+ errors; a mixed narrow listing points there."""
    from trainer.models.__main__ import main

    monkeypatch.setenv("COLUMNS", "80")
    main(["*cifar*"])
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "name" in line and "params" in line)
    columns = [c.strip() for c in header.strip("┃").split("┃")]
    assert columns[-4:] == ["C10", "C10+", "C100", "C100+"], columns
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("│").split("│")]
        if len(cells) == len(columns):
            rows[cells[0]] = dict(zip(columns, cells, strict=True))
    assert sorted(rows) == CIFAR_NETWORKS
    # the papers' counts at 10 classes: ResNet-56 0.85 M (He et al. Table 6; 0.92 M at 1000 classes)
    assert rows["resnet56_cifar"]["params (M)"] == "0.85"
    assert rows["densenet_bc100_k12_cifar"]["params (M)"] == "0.77"  # Table 2: 0.8 M
    for name, row in rows.items():
        entry = get_entry(name)
        assert row["params (M)"] == f"{entry.cifar_params / 1e6:.2f}", name
        for protocol in ("C10", "C10+", "C100", "C100+"):
            error = entry.cifar_error.get(protocol)
            assert row[protocol] == ("-" if error is None else f"{error:.2f}"), (name, protocol)
    assert rows["densenet40_k12_cifar"]["C100"] == "27.55" and rows["resnet110_cifar"]["C10+"] == "6.43"
    main(["resnet*"])  # CIFAR and ImageNet networks at 80 columns: the ImageNet columns, and where the errors are
    out = capsys.readouterr().out
    assert "'*cifar*'" in out and "C100+" not in out


@pytest.mark.unit
def test_bad_network_arguments_are_one_line() -> None:
    for name, kwargs, text in (
        ("resnet20_cifar", {"depth": 21}, "6n+2"),
        ("densenet40_k12_cifar", {"depth": 41}, "3n+4"),
        ("resnext29_8x64d_cifar", {"cardinality": 0}, "cardinality"),
    ):
        with pytest.raises(ConfigError) as error:
            meta_model(name, **kwargs)
        assert text in str(error.value) and "\n" not in str(error.value)


# --- the data module -------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_cifar10_tar_gz_labels_class_names_and_split_sizes(cifar10_root: Path, tmp_path: Path) -> None:
    module = _datamodule(tmp_path, "cifar10", cifar10_root)
    assert module.classes == CIFAR10_NAMES and module.num_classes == 10
    assert len(module.train_set) == 5 * N_PER_BATCH and len(module.val_set) == N_TEST  # validation: the test set
    # the labels and pixels are the archive's, the batches in order (data_batch_1 first)
    first = pickle.loads(cifar10_files()["data_batch_1"], encoding="latin1")
    images, labels = module.arrays("train")
    assert labels[:N_PER_BATCH].tolist() == first["labels"]
    assert np.array_equal(images[7], first["data"][7].reshape(3, 32, 32).transpose(1, 2, 0))
    image, label = module.val_set[3]
    assert image.shape == (3, 32, 32) and label == pickle.loads(cifar10_files()["test_batch"])["labels"][3]


@pytest.mark.unit
def test_cifar100_folder_fine_and_coarse_labels(cifar100_root: Path, tmp_path: Path) -> None:
    module = _datamodule(tmp_path, "cifar100", cifar100_root)
    assert module.num_classes == 100 and module.classes[:2] == ["fine_00", "fine_01"]
    assert (len(module.train_set), len(module.val_set)) == (N100_TRAIN, N100_TEST)
    fine = module.arrays("train")[1]
    coarse = _datamodule(tmp_path, "cifar100", cifar100_root, "data.label_type=coarse")  # one override: 20 classes
    assert coarse.classes == [f"coarse_{i}" for i in range(20)] and coarse.num_classes == 20
    assert np.array_equal(coarse.arrays("train")[1], fine // 5)  # as the generated archive pairs them
    with pytest.raises(ConfigError, match="label_type='coarse'"):
        _datamodule(tmp_path, "cifar10", cifar100_root, "data.label_type=coarse")


@pytest.mark.unit
def test_coarse_labels_alone_give_the_model_20_classes(cifar100_root: Path, tmp_path: Path) -> None:
    """data.num_classes follows data.label_type: `data.label_type=coarse` is the one override the superclasses need;
    the config (what config.yaml records), the data module and the model's head all count 20. An explicit
    data.num_classes still wins, and a wrong one is refused."""
    cfg = _data_cfg(tmp_path, "cifar100", cifar100_root, "model=resnet20_cifar", "data.label_type=coarse")
    assert cfg.data.num_classes == 20
    assert _data_cfg(tmp_path, "cifar100", cifar100_root).data.num_classes == 100
    assert _data_cfg(tmp_path, "cifar10", cifar100_root).data.num_classes == 10
    module = build_datamodule(cfg)
    with torch.device("meta"):
        model = build_model(cfg, num_classes=len(module.classes))  # as train() builds it
    assert model.get_classifier().out_features == 20
    bad = _data_cfg(tmp_path, "cifar100", cifar100_root, "data.label_type=coarse", "data.num_classes=100")
    with pytest.raises(DataError, match="names 20 coarse classes but data.num_classes=100"):
        _ = build_datamodule(bad).classes


@pytest.mark.unit
def test_val_split_holds_out_the_last_training_images(cifar10_root: Path, tmp_path: Path) -> None:
    full_images, full_labels, _ = load_split(cifar10_root, "cifar10", "train")
    module = _datamodule(tmp_path, "cifar10", cifar10_root, "data.val_split=50")
    train_images, train_labels = module.arrays("train")
    val_images, val_labels = module.arrays("val")
    assert (len(train_labels), len(val_labels)) == (5 * N_PER_BATCH - 50, 50)
    assert np.array_equal(val_images, full_images[-50:]) and np.array_equal(val_labels, full_labels[-50:])
    assert np.array_equal(train_images, full_images[:-50])
    with pytest.raises(ConfigError, match="val_split=300"):
        load_split(cifar10_root, "cifar10", "train", val_split=300)


@pytest.mark.unit
def test_padding_crop_statistics(cifar10_root: Path, tmp_path: Path) -> None:
    """augment=cifar: 4 zero pixels on each side, a random 32x32 crop, a flip. The crop's offset per axis is uniform on
    0..8, so the padding covers E|U - 4| = 20/9 rows (and columns) on average and 1 - (1 - 20/288)^2 of the pixels;
    no shift at all on an axis has probability 1/9; half the images are mirrored."""
    module = _datamodule(tmp_path, "cifar10", cifar10_root, "augment=cifar")
    transform = module.train_set.transform  # what the training loader applies
    from PIL import Image

    ramp = np.tile(np.linspace(60, 250, 32).astype(np.uint8)[None, :, None], (32, 1, 3))  # left dark, right bright
    image = Image.fromarray(ramp)
    mean, std = np.array(module.mean), np.array(module.std)
    zero = torch.tensor(-mean / std, dtype=torch.float32)[:, None, None]  # a padded pixel after normalisation
    torch.manual_seed(0)
    trials, padded, unshifted_rows, flipped = 2000, 0.0, 0, 0
    for _ in range(trials):
        x = transform(image)
        is_pad = torch.isclose(x, zero.expand_as(x), atol=1e-5).all(0)
        padded += is_pad.float().mean().item()
        unshifted_rows += int(not is_pad.all(1).any())  # no row all padding: no vertical shift
        inside = x[0][16][~is_pad[16]]
        flipped += int(inside[0] > inside[-1])
    expected = 1 - (1 - 20 / 288) ** 2
    assert padded / trials == pytest.approx(expected, abs=0.01)
    assert unshifted_rows / trials == pytest.approx(1 / 9, abs=0.025)
    assert flipped / trials == pytest.approx(0.5, abs=0.04)
    # augment=none: the image as it is, normalised
    plain = _datamodule(tmp_path, "cifar10", cifar10_root, "augment=none").train_set.transform(image)
    assert torch.allclose(plain[0, 0], torch.tensor((ramp[0, :, 0] / 255 - mean[0]) / std[0], dtype=torch.float32))


@pytest.mark.unit
def test_missing_archive_names_the_file_and_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        CifarArchive(tmp_path / "nothing", "cifar100")
    message = str(error.value)
    assert "cifar-100-python.tar.gz" in message and "cs.toronto.edu" in message and "\n" not in message


@pytest.mark.unit
@pytest.mark.parametrize("damage", ["truncated_tar", "not_a_pickle", "wrong_shape", "labels_out_of_range"])
def test_damaged_archive_is_one_line_naming_the_file(damage: str, tmp_path: Path) -> None:
    files = cifar10_files()
    if damage == "truncated_tar":
        tar = write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
        tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
        named = str(tar)
    else:
        batch = pickle.loads(files["data_batch_3"], encoding="latin1")
        if damage == "not_a_pickle":
            files["data_batch_3"] = files["data_batch_3"][:100]
        elif damage == "wrong_shape":
            files["data_batch_3"] = _pickled({**batch, "data": batch["data"][:, :1024]})
        else:
            files["data_batch_3"] = _pickled({**batch, "labels": [10] * len(batch["labels"])})
        write_folder(tmp_path / "cifar-10-batches-py", files)
        named = str(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DataError) as error:
        load_split(tmp_path, "cifar10", "train")
    message = str(error.value)
    assert named in message and "\n" not in message, message


@pytest.mark.unit
def test_md5_is_checked_only_with_verify(cifar10_root: Path) -> None:
    assert len(load_split(cifar10_root, "cifar10", "val")[1]) == N_TEST  # no md5 can match a generated archive
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz.*md5"):
        load_split(cifar10_root, "cifar10", "val", verify=True)


# --- recipes ---------------------------------------------------------------------------------------------------------

# (model, batch, lr, weight decay, epochs, C10+ error) from each paper's CIFAR section and table
CIFAR_RECIPES = {
    "resnet_cifar": ("resnet110_cifar", 128, 0.1, 1e-4, 64_000 / (50_000 // 128), 6.43),  # He et al. 2016, Sec. 4.2
    "preact_resnet_cifar": ("preact_resnet164_cifar", 128, 0.1, 1e-4, 64_000 / (50_000 // 128), 5.46),  # Table 3
    "wide_resnet_cifar": ("wide_resnet28_10_cifar", 128, 0.1, 5e-4, 200, 3.89),  # WRN Sec. 3, Table 6
    "stochastic_depth_cifar": ("resnet110_cifar", 128, 0.1, 1e-4, 500, 5.25),  # Huang et al. 2016, Table 1
    "densenet_cifar": ("densenet_bc100_k12_cifar", 64, 0.1, 1e-4, 300, 4.51),  # DenseNet Sec. 4.2, Table 2
    "resnext_cifar": ("resnext29_8x64d_cifar", 128, 0.1, 5e-4, 300, 3.65),  # ResNeXt Sec. 5.3, Table 7
    "fractalnet_cifar": ("fractalnet20_cifar", 100, 0.02, 0.0, 400, 4.60),  # FractalNet Sec. 4, Table 1
}


@pytest.mark.unit
@pytest.mark.parametrize("recipe", sorted(CIFAR_RECIPES))
def test_cifar_recipe_composes_with_its_model_on_cifar_and_carries_the_papers_values(
    recipe: str, cifar10_root: Path, tmp_path: Path
) -> None:
    model_name, batch, lr, weight_decay, epochs, c10_plus = CIFAR_RECIPES[recipe]
    cfg = compose_config(  # as train.py composes it (no test shrinking: the recipe's own epochs)
        ["data=cifar10", f"data.root={cifar10_root}", f"recipe={recipe}", f"model={model_name}", f"run_dir={tmp_path}"]
    )
    assert cfg.recipe_info.model == model_name and cfg.recipe_info.name == recipe
    assert (cfg.data.batch_size, cfg.optim.ref_batch_size, cfg.optim.lr) == (batch, batch, pytest.approx(lr))
    assert cfg.optim.weight_decay == pytest.approx(weight_decay) and cfg.optim.momentum == pytest.approx(0.9)
    assert cfg.trainer.max_epochs == math.floor(epochs)  # 64k iterations: 164 epochs of 390 batches
    assert cfg.augment.crop == "pad_random" and cfg.augment.padding == 4 and cfg.augment.hflip == 0.5  # C10+
    assert cfg.recipe_info.top1 == pytest.approx(100 - c10_plus)
    assert f"{c10_plus:.2f}" in cfg.recipe_info.protocol
    header = (ROOT / "recipes" / f"{recipe}.yaml").read_text()
    assert f"arXiv:{cfg.recipe_info.arxiv}" in header and "Interpretations" in header
    if cfg.sched.interval == "step":  # iterations converted at 390 batches of 128 an epoch: 32k and 48k
        steps_per_epoch = 50_000 // batch
        assert [round(m * steps_per_epoch, -2) for m in cfg.sched.milestones] == [32_000, 48_000]
        assert round(cfg.sched.warmup_epochs * steps_per_epoch, -1) == 400 and cfg.sched.warmup_lr == 0.01
    with torch.device("meta"):
        build_model(cfg, num_classes=10)
    assert build_datamodule(cfg).num_classes == 10


# --- real training, one run per data set --------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(("data", "num_classes"), [("cifar10", 10), ("cifar100", 100)])
def test_training_on_a_generated_archive_beats_chance(
    data: str, num_classes: int, cifar10_root: Path, cifar100_root: Path, tmp_path: Path
) -> None:
    root = cifar10_root if data == "cifar10" else cifar100_root
    cfg = _data_cfg(
        tmp_path,
        data,
        root,
        "model=resnet20_cifar",
        "+model.kwargs.depth=8",  # ResNet-8 at a quarter of the width: the data path is under test, not the net
        "+model.kwargs.widths=[8,16,32]",
        "augment=cifar",
        "data.batch_size=50",
        "trainer.max_epochs=3",
        "optim.lr=0.1",
        "callbacks.checkpoint=null",
        "callbacks.last_checkpoint=null",
        "+trainer.enable_checkpointing=false",
    )
    results = train(cfg)
    chance = 100 / num_classes
    assert results["top1"] > 2 * chance, results


# --- FFCV ------------------------------------------------------------------------------------------------------------

needs_ffcv = pytest.mark.skipif(importlib.util.find_spec("ffcv") is None, reason="ffcv is not installed")


@pytest.mark.integration
@pytest.mark.slow  # ffcv's numba compilation of the pipelines: about a minute on 2 shared cores
@needs_ffcv
def test_ffcv_files_written_from_the_archive_hold_its_pixels_and_labels(cifar10_root: Path, tmp_path: Path) -> None:
    from trainer.data.ffcv import check_beton, write_from_config

    for split in ("train", "val"):
        cfg = compose_config(
            [
                "data=cifar10",
                f"data.root={cifar10_root}",
                f"split={split}",
                f"out={tmp_path}/{split}.beton",  # write_mode left at its default: raw pixels for CIFAR
                "num_workers=1",
                "page_size=2097152",
                "progress=false",
            ],
            config_name="write_ffcv",
        )
        result = write_from_config(cfg)
        assert result.images == (5 * N_PER_BATCH if split == "train" else N_TEST)
        assert check_beton(tmp_path / f"{split}.beton").write["write_mode"] == "raw"
    ffcv_cfg = _data_cfg(
        tmp_path,
        "cifar10_ffcv",
        cifar10_root,
        "model=resnet20_cifar",
        f"data.train_beton={tmp_path}/train.beton",
        f"data.val_beton={tmp_path}/val.beton",
        "data.batch_size=25",
        "data.num_workers=1",
    )
    ffcv_module = build_datamodule(ffcv_cfg)
    ffcv_module.setup("fit")
    assert ffcv_module.classes == CIFAR10_NAMES
    folder_module = _datamodule(tmp_path, "cifar10", cifar10_root)
    images, labels = [], []
    for x, y in ffcv_module.val_dataloader():  # sequential: the test batch in order
        images.append(x.float())
        labels.append(y)
    expected = torch.stack([folder_module.val_set[i][0] for i in range(N_TEST)])
    assert torch.equal(torch.cat(labels), torch.from_numpy(folder_module.arrays("val")[1]))
    assert torch.allclose(torch.cat(images), expected, atol=1e-5)  # raw pixels, the same normalisation
    x, y = next(iter(ffcv_module.train_dataloader()))
    assert x.shape == (25, 3, 32, 32) and y.shape == (25,)
    ffcv_module.teardown()


@pytest.mark.unit
def test_write_ffcv_stores_cifar_as_raw_pixels_by_default(cifar10_root: Path) -> None:
    """`scripts/write_ffcv.py data=cifar10 split=train` alone writes raw pixels (a JPEG would change the images the
    papers train on); a folder keeps FFCV's ImageNet default, and write_mode= still chooses."""
    from trainer.data.ffcv.convert import write_options

    def options(*overrides: str):
        return write_options(compose_config(["split=train", *overrides], config_name="write_ffcv"))

    assert options("data=cifar10", f"data.root={cifar10_root}").write_mode == "raw"
    assert options("data=cifar100").write_mode == "raw"
    assert options("data.root=/any/folder").write_mode == "proportion"
    assert options("data=cifar10", "write_mode=jpg").write_mode == "jpg"


# --- the report ------------------------------------------------------------------------------------------------------


def _report_script():
    spec = importlib.util.spec_from_file_location("report_script", ROOT / "scripts" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.unit
def test_report_takes_the_papers_figure_for_the_runs_cifar_protocol() -> None:
    report = _report_script()

    def cfg(data: str, crop: str, label_type: str = "fine"):
        return OmegaConf.create({"data": {"dataset": data, "label_type": label_type}, "augment": {"crop": crop}})

    # DenseNet-BC (L=100, k=12), Table 2: C10 5.92, C10+ 4.51, C100 24.15, C100+ 22.27 % error
    name = "densenet_bc100_k12_cifar"
    assert report.paper_numbers(name, cfg("cifar10", "pad_random"))[0] == pytest.approx(100 - 4.51)
    assert report.paper_numbers(name, cfg("cifar10", "none"))[0] == pytest.approx(100 - 5.92)
    assert report.paper_numbers(name, cfg("cifar100", "pad_random"))[0] == pytest.approx(100 - 22.27)
    top1, _, protocol = report.paper_numbers(name, cfg("cifar100", "none"))
    assert top1 == pytest.approx(100 - 24.15) and protocol.startswith("C100 ")
    # ResNet (He et al. 2016) reports no CIFAR-100 figure: none is shown, not the recipe's CIFAR-10 one
    assert report.paper_numbers("resnet110_cifar", cfg("cifar100", "pad_random")) == (None, None, None)
    assert report.paper_numbers(name, cfg("cifar100", "pad_random", "coarse")) == (None, None, None)


# Huang et al. 2016 (stochastic depth), Table 1: ResNet-110 C10+ 5.25, C100+ 24.98; ResNet-1202 C10+ 4.91 % error
STOCHASTIC_DEPTH_ERRORS = {"resnet110_cifar": {"C10+": 5.25, "C100+": 24.98}, "resnet1202_cifar": {"C10+": 4.91}}


def _finished_run(run: Path, overrides: list[str], top1: float = 90.0) -> Path:
    """A run directory as train() leaves it: the resolved config.yaml and results.json."""
    run.mkdir(parents=True)
    OmegaConf.save(compose_config([*overrides, f"run_dir={run}"]), run / "config.yaml", resolve=True)
    (run / "results.json").write_text(f'{{"top1": {top1}, "top5": 99.0, "epochs": 500}}')
    return run


@pytest.mark.unit
@pytest.mark.slow
def test_report_compares_a_cifar_run_with_the_figure_of_the_recipe_it_ran(tmp_path: Path) -> None:
    """resnet110_cifar trained with recipe=stochastic_depth_cifar is Huang et al.'s experiment (5.25 % on C10+), not
    He et al.'s (6.43 %); the figure is the run's protocol's, from the run's saved config.yaml."""
    report = _report_script()
    assert OmegaConf.load(ROOT / "recipes" / "stochastic_depth_cifar.yaml").recipe_info.cifar_error == (
        STOCHASTIC_DEPTH_ERRORS
    )

    def paper(name: str, *overrides: str) -> tuple[float | None, str | None]:
        rows = report.run_rows(_finished_run(tmp_path / name, list(overrides)))
        assert len(rows) == 1
        if rows[0]["paper_top1"] is not None:
            assert rows[0]["diff_top1"] == pytest.approx(90.0 - rows[0]["paper_top1"])
        return rows[0]["paper_top1"], rows[0]["paper_protocol"]

    top1, protocol = paper("sd_c10", "data=cifar10", "recipe=stochastic_depth_cifar")
    assert top1 == pytest.approx(100 - 5.25) and protocol.startswith("C10+ ") and "Huang" in protocol
    top1, protocol = paper("sd_c100", "data=cifar100", "recipe=stochastic_depth_cifar")
    assert top1 == pytest.approx(100 - 24.98) and "Huang" in protocol
    top1, _ = paper("sd_1202", "data=cifar10", "recipe=stochastic_depth_cifar", "model=resnet1202_cifar")
    assert top1 == pytest.approx(100 - 4.91)
    # without augmentation Huang et al. give no figure for ResNet-110: none, not another paper's
    assert paper("sd_c10_plain", "data=cifar10", "recipe=stochastic_depth_cifar", "augment=none") == (None, None)
    # the same network with He et al.'s recipe: He et al.'s figure (Table 6), and none on CIFAR-100
    top1, protocol = paper("he_c10", "data=cifar10", "recipe=resnet_cifar")
    assert top1 == pytest.approx(100 - 6.43) and "He et al." in protocol
    assert paper("he_c100", "data=cifar100", "recipe=resnet_cifar") == (None, None)
    # a recipe crossed onto another family's network, or no recipe: the network's catalogue paper
    top1, protocol = paper("crossed", "data=cifar10", "recipe=resnet_cifar", "model=densenet_bc100_k12_cifar")
    assert top1 == pytest.approx(100 - 4.51) and "Huang et al. 2017" in protocol
    top1, _ = paper("no_recipe", "data=cifar100", "model=wide_resnet28_10_cifar", "augment=cifar")
    assert top1 == pytest.approx(100 - 18.85)


@pytest.mark.unit
@pytest.mark.parametrize("recipe", sorted(CIFAR_RECIPES))
def test_cifar_recipes_carry_their_papers_errors(recipe: str) -> None:
    """Each CIFAR recipe lists the errors of the networks its paper trained (its own model among them); where the
    paper is the network's catalogue paper, they are the catalogue's."""
    info = OmegaConf.load(ROOT / "recipes" / f"{recipe}.yaml").recipe_info
    errors = OmegaConf.to_container(info.cifar_error)
    assert errors[info.model]["C10+"] == pytest.approx(CIFAR_RECIPES[recipe][-1])
    for name, by_protocol in errors.items():
        entry = get_entry(name)
        assert entry.family in info.families, name
        assert by_protocol and set(by_protocol) <= {"C10", "C10+", "C100", "C100+"}, name
        if entry.paper.title == info.title:
            assert by_protocol == entry.cifar_error, name
    if recipe == "stochastic_depth_cifar":
        assert errors == STOCHASTIC_DEPTH_ERRORS


@pytest.mark.unit
def test_readme_cifar_table_is_the_recipes_figures() -> None:
    """README.md's CIFAR table: every CIFAR recipe, its paper's networks, and their C10+ / C100+ errors as the recipe
    carries them (recipe_info.cifar_error, checked against the catalogue above)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## CIFAR\n") :]
    section = section[: section.index("\n## ")]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ") and "`" in line]
    seen = set()
    for _paper, models, recipe, c10, c100 in rows:
        recipe = recipe.strip("`")
        errors = OmegaConf.to_container(OmegaConf.load(ROOT / "recipes" / f"{recipe}.yaml").recipe_info.cifar_error)
        names = [m.strip("`") for m in models.split(", ")]
        assert names == list(errors), recipe
        for protocol, cells in (("C10+", c10), ("C100+", c100)):
            if all(protocol not in errors[n] for n in names):
                assert cells.strip() == "-", (recipe, protocol)
                continue
            given = [c.strip() for c in cells.split(" / ")]
            assert given == [f"{errors[n][protocol]:.2f}" if protocol in errors[n] else "-" for n in names], recipe
        seen.add(recipe)
    assert seen == set(CIFAR_RECIPES)
    assert "python train.py data=cifar10 model=resnet110_cifar recipe=resnet_cifar" in section
