"""Data pipeline: the bundled sample set, ImageNet-layout validation, bad images, transforms and batching."""

from __future__ import annotations

import copy
import pickle
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from tests.helpers import CONF_DIR
from trainer.builders import build_datamodule
from trainer.data import ImageFolderDataModule, validate_layout, write_sample_set
from trainer.data.folder import ImageFolderDataset, SkipCounter, collate_skipping_bad
from trainer.data.transforms import build_train_transform
from trainer.errors import ConfigError, DataError, UserError

MEAN = (0.5, 0.25, 0.1)
STD = (0.5, 0.25, 0.2)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))


def _image(path: Path, size: tuple[int, int] = (8, 8), color: tuple[int, int, int] = (200, 30, 90)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")
    return path


def _tree(root: Path, layout: dict[str, dict[str, int]], ext: str = ".jpg") -> Path:
    """`layout` maps split -> class -> number of JPEGs to write."""
    for split, classes in layout.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _image(root / split / name / f"{i}{ext}")
    return root


def _datamodule(root: Path, **kwargs) -> ImageFolderDataModule:
    args = dict(resolution=32, crop_ratio=0.875, mean=MEAN, std=STD, num_workers=0, pin_memory=False)
    return ImageFolderDataModule(root=str(root), **{**args, **kwargs})


def _assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path | str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_set(tmp_path_factory.mktemp("sample") / "digits")


@pytest.fixture()
def corrupt_root(tmp_path: Path) -> Path:
    """Two classes, three good images each per split, plus one undecodable `val/a/x.jpg`."""
    root = _tree(tmp_path / "data", {"train": {"a": 3, "b": 3}, "val": {"a": 3, "b": 3}})
    (root / "val" / "a" / "x.jpg").write_bytes(b"this is not a jpeg" * 10)
    return root


# -- sample set ----------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_sample_set_has_all_digits_split_stratified(sample_root: Path) -> None:
    counts = {
        split: {c.name: len(list(c.glob("*.jpg"))) for c in (sample_root / split).iterdir()}
        for split in ("train", "val")
    }
    assert sorted(counts["train"]) == sorted(counts["val"]) == [str(d) for d in range(10)]
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == 1797
    assert sum(counts["val"].values()) == 360  # ceil(0.2 * 1797)
    for digit in counts["train"]:
        total = counts["train"][digit] + counts["val"][digit]
        assert abs(counts["val"][digit] - 0.2 * total) <= 1  # stratified: each class split 80/20
    train_ids = {p.stem for p in (sample_root / "train").rglob("*.jpg")}
    val_ids = {p.stem for p in (sample_root / "val").rglob("*.jpg")}
    assert not train_ids & val_ids
    assert len(train_ids | val_ids) == 1797


@pytest.mark.unit
def test_sample_images_are_rgb_jpegs_of_the_requested_size(sample_root: Path) -> None:
    with Image.open(next((sample_root / "val" / "3").glob("*.jpg"))) as image:
        assert image.format == "JPEG"
        assert image.mode == "RGB"
        assert image.size == (32, 32)


@pytest.mark.unit
def test_sample_set_is_deterministic(sample_root: Path, tmp_path: Path) -> None:
    assert _files(write_sample_set(tmp_path / "again")) == _files(sample_root)


@pytest.mark.unit
def test_sample_set_is_written_once(sample_root: Path) -> None:
    stamps = {p: p.stat().st_mtime_ns for p in [sample_root / ".complete", *sorted(sample_root.rglob("*.jpg"))[:20]]}
    assert write_sample_set(sample_root) == sample_root
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert [p.name for p in sample_root.parent.iterdir()] == ["digits"]  # no temporary folder left behind


@pytest.mark.unit
def test_sample_set_with_other_parameters_is_refused(sample_root: Path) -> None:
    with pytest.raises(DataError) as exc:
        write_sample_set(sample_root, size=16)
    _assert_one_line_naming(exc, sample_root)


@pytest.mark.unit
def test_sample_set_refuses_a_folder_that_is_not_one(tmp_path: Path) -> None:
    _image(tmp_path / "mine" / "keep.jpg")
    with pytest.raises(DataError) as exc:
        write_sample_set(tmp_path / "mine")
    _assert_one_line_naming(exc, tmp_path / "mine")


@pytest.mark.unit
def test_sample_set_ignores_a_killed_partial_write(tmp_path: Path) -> None:
    # What a killed write leaves: a half-filled temporary sibling, never a half-filled root.
    _tree(tmp_path / ".digits.partial-dead", {"train": {"0": 2}})
    (tmp_path / "digits").mkdir()  # an empty folder is fine to fill
    root = write_sample_set(tmp_path / "digits", size=8)
    assert len(_files(root)) == 1797
    assert validate_layout(root) == [str(d) for d in range(10)]


# -- layout validation ---------------------------------------------------------------------------------------


@pytest.mark.unit
def test_validate_layout_returns_sorted_shared_classes(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"train": {"n02": 1, "n01": 2}, "val": {"n01": 1, "n02": 1}}, ext=".JPEG")
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    assert validate_layout(root) == ["n01", "n02"]


def _missing_root(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "nowhere", tmp_path / "nowhere"


def _missing_val(tmp_path: Path) -> tuple[Path, Path]:
    return _tree(tmp_path, {"train": {"a": 1}}), tmp_path / "val"


def _flat_split(tmp_path: Path) -> tuple[Path, Path]:
    root = _tree(tmp_path, {"train": {"a": 1}, "val": {}})
    _image(root / "val" / "loose.jpg")  # images straight under val/, no class folders
    return root, root / "val"


def _empty_class(tmp_path: Path) -> tuple[Path, Path]:
    root = _tree(tmp_path, {"train": {"a": 1, "b": 1}, "val": {"a": 1, "b": 0}})
    (root / "val" / "b" / "notes.txt").write_text("not an image")
    return root, root / "val" / "b"


def _different_classes(tmp_path: Path) -> tuple[Path, Path]:
    return _tree(tmp_path, {"train": {"a": 1, "b": 1}, "val": {"a": 1, "c": 1}}), tmp_path / "val"


@pytest.mark.unit
@pytest.mark.parametrize("make", [_missing_root, _missing_val, _flat_split, _empty_class, _different_classes])
def test_validate_layout_errors_name_the_path(tmp_path: Path, make) -> None:
    root, named = make(tmp_path)
    with pytest.raises(DataError) as exc:
        validate_layout(root)
    _assert_one_line_naming(exc, named)


@pytest.mark.unit
def test_validate_layout_messages_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        validate_layout(tmp_path / "nowhere")
    root, _ = _flat_split(tmp_path / "flat")
    with pytest.raises(DataError, match=r"expected .*/train/<class>/\*\.JPEG"):
        validate_layout(root)
    root, _ = _different_classes(tmp_path / "diff")
    with pytest.raises(DataError, match="missing 'b'; extra 'c'"):
        validate_layout(root)


# -- undecodable images --------------------------------------------------------------------------------------


@pytest.mark.unit
def test_corrupt_image_raises_naming_the_file(corrupt_root: Path) -> None:
    dataset = ImageFolderDataset(corrupt_root / "val", ["a", "b"])
    bad = [i for i, (path, _) in enumerate(dataset.samples) if path.endswith("x.jpg")]
    with pytest.raises(DataError) as exc:
        dataset[bad[0]]
    _assert_one_line_naming(exc, corrupt_root / "val" / "a" / "x.jpg")
    assert str(exc.value).startswith("cannot decode image")


@pytest.mark.unit
def test_corrupt_image_error_survives_a_worker_process(corrupt_root: Path) -> None:
    loader = _datamodule(corrupt_root, batch_size=4, num_workers=1).val_dataloader()
    with pytest.raises(UserError) as exc:
        list(loader)
    message = exc.value.one_line()
    assert message.startswith("cannot decode image")
    assert str(corrupt_root / "val" / "a" / "x.jpg") in message
    assert "\n" not in message


@pytest.mark.unit
@pytest.mark.parametrize("num_workers", [0, 1])
def test_corrupt_image_is_skipped_and_counted(corrupt_root: Path, num_workers: int) -> None:
    datamodule = _datamodule(corrupt_root, batch_size=8, num_workers=num_workers, skip_bad_images=True)
    datamodule.setup("validate")
    batches = list(datamodule.val_dataloader())
    assert len(batches) == 1
    images, targets = batches[0]
    assert images.shape == (6, 3, 32, 32)  # 7 files, one bad
    assert targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert datamodule.bad_images_skipped() == 1
    assert datamodule.bad_images_skipped() == 0  # reading resets the count


@pytest.mark.unit
@pytest.mark.slow
def test_skip_count_reaches_the_parent_from_spawned_workers(corrupt_root: Path) -> None:
    # Spawned workers (macOS, ddp_spawn) get the counter by pickling, not by fork inheritance.
    datamodule = _datamodule(corrupt_root, batch_size=8, skip_bad_images=True)
    datamodule.setup("validate")
    loader = DataLoader(
        datamodule.val_set,
        batch_size=4,
        num_workers=1,
        multiprocessing_context="spawn",
        collate_fn=collate_skipping_bad,
    )
    assert sum(len(targets) for _, targets in loader) == 6
    assert datamodule.bad_images_skipped() == 1


@pytest.mark.unit
def test_all_bad_batch_collates_to_none() -> None:
    assert collate_skipping_bad([None, None]) is None
    images, targets = collate_skipping_bad([None, (torch.zeros(3), 1)])
    assert images.shape == (1, 3)
    assert targets.tolist() == [1]


@pytest.mark.unit
def test_skip_counter_survives_pickling(corrupt_root: Path) -> None:
    counter = SkipCounter()
    counter.add(2)
    clone = pickle.loads(pickle.dumps(counter))
    assert clone.value == 2
    clone.add()
    assert (counter.value, clone.value) == (2, 3)  # outside process start-up a pickle is an independent copy
    dataset = ImageFolderDataset(corrupt_root / "val", ["a", "b"], skip_bad_images=True, skip_counter=counter)
    assert len(copy.deepcopy(dataset)) == len(dataset) == 7


# -- transforms ----------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_transform_output_shapes_and_no_extra_augmentation(sample_root: Path) -> None:
    datamodule = _datamodule(sample_root, resolution=40)
    datamodule.setup("fit")
    train = datamodule.train_set.transform  # what the training loader applies
    image = Image.new("RGB", (64, 48), (10, 120, 240))
    assert train(image).shape == (3, 40, 40)
    assert datamodule.val_set.transform(image).shape == (3, 40, 40)
    stages = [type(t) for t in train.transforms]
    assert transforms.ColorJitter not in stages
    assert transforms.RandomErasing not in stages
    assert not any("Erasing" in t.__name__ or "AutoAugment" in t.__name__ for t in stages)
    assert transforms.RandomHorizontalFlip in stages
    assert any("RandomResizedCrop" in t.__name__ for t in stages)


@pytest.mark.unit
def test_val_transform_resizes_shorter_side_then_centre_crops(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (48, 64, 3), dtype=torch.uint8, generator=generator)
    image = Image.fromarray(pixels.numpy())  # 64 wide, 48 high
    out = _datamodule(tmp_path, resolution=32, crop_ratio=0.875).val_transform()(image)
    resized = TF.resize(image, 36, interpolation=TF.InterpolationMode.BILINEAR)  # floor(32 / 0.875)
    assert resized.size == (48, 36)
    expected = TF.normalize(TF.to_tensor(TF.center_crop(resized, [32, 32])), MEAN, STD)
    torch.testing.assert_close(out, expected)


@pytest.mark.unit
def test_normalisation_uses_the_given_mean_and_std(tmp_path: Path) -> None:
    color = (255, 0, 51)
    out = _datamodule(tmp_path).val_transform()(Image.new("RGB", (50, 50), color))
    for channel in range(3):
        expected = (color[channel] / 255 - MEAN[channel]) / STD[channel]
        torch.testing.assert_close(out[channel], torch.full((32, 32), expected))


@pytest.mark.unit
@pytest.mark.parametrize("key", ["resolution", "crop_ratio", "mean", "std"])
def test_unset_transform_setting_is_a_config_error(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"data\.{key} is not set"):
        _datamodule(tmp_path, **{key: None}).setup("fit")


# -- batching and the datamodule -----------------------------------------------------------------------------


@pytest.mark.unit
def test_global_batch_is_split_across_devices(tmp_path: Path) -> None:
    datamodule = _datamodule(tmp_path, batch_size=256)
    assert datamodule.per_device_batch_size == 256
    datamodule.trainer = SimpleNamespace(world_size=8)  # all the datamodule reads from its trainer
    assert datamodule.per_device_batch_size == 32


@pytest.mark.unit
def test_indivisible_batch_is_a_config_error(tmp_path: Path) -> None:
    datamodule = _datamodule(tmp_path, batch_size=250)
    datamodule.trainer = SimpleNamespace(world_size=8)
    with pytest.raises(ConfigError, match=r"data\.batch_size=250 is not divisible by the 8 devices") as exc:
        datamodule.setup("fit")
    assert "\n" not in str(exc.value)


@pytest.mark.unit
def test_unexpected_class_count_is_a_data_error(sample_root: Path) -> None:
    datamodule = _datamodule(sample_root, num_classes=1000)
    with pytest.raises(DataError) as exc:
        datamodule.classes  # noqa: B018
    _assert_one_line_naming(exc, sample_root)
    assert "10 class folders" in str(exc.value) and "1000" in str(exc.value)
    assert _datamodule(sample_root, num_classes=10).num_classes == 10


@pytest.mark.unit
def test_small_train_set_is_not_dropped(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"train": {"a": 2, "b": 1}, "val": {"a": 1, "b": 1}})
    batches = list(_datamodule(root, batch_size=8, drop_last=True).train_dataloader())
    assert [len(targets) for _, targets in batches] == [3]


@pytest.mark.unit
def test_sample_datamodule_end_to_end(sample_root: Path) -> None:
    datamodule = _datamodule(sample_root, sample=True, batch_size=64, num_classes=10)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert datamodule.classes == [str(d) for d in range(10)]
    assert (len(datamodule.train_set), len(datamodule.val_set)) == (1437, 360)
    train = datamodule.train_dataloader()
    assert len(train) == 1437 // 64  # drop_last on a set larger than one batch
    images, targets = next(iter(train))
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert targets.dtype == torch.int64 and int(targets.min()) >= 0 and int(targets.max()) <= 9
    val = list(datamodule.val_dataloader())
    assert sum(len(t) for _, t in val) == 360
    assert datamodule.state_dict() == {}


@pytest.mark.unit
def test_sample_datamodule_writes_the_set_on_a_fresh_machine(tmp_path: Path) -> None:
    root = tmp_path / "fresh" / "digits"
    datamodule = _datamodule(root, sample=True, sample_size=8)
    assert not root.exists()
    assert datamodule.num_classes == 10  # asking for the classes writes the set first
    assert (root / ".complete").is_file()
    with Image.open(next((root / "train" / "0").glob("*.jpg"))) as image:
        assert image.size == (8, 8)


# --- training augmentation (trainer.data.transforms) --------------------------------------------------------------


def _photo(width: int = 400, height: int = 300, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _augment(**overrides):
    base = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "augment" / "imagenet.yaml"))
    base.update(overrides)
    return base


@pytest.mark.unit
def test_lighting_adds_one_pca_offset_per_image_with_the_papers_spread() -> None:
    from trainer.data.transforms import IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC, Lighting

    torch.manual_seed(0)
    image = torch.rand(3, 8, 8)
    shifts = torch.stack([(Lighting(0.1)(image) - image)[:, 0, 0] for _ in range(4000)])
    # every pixel gets the same RGB offset, and the offsets lie in the PCA basis with std 0.1 * eigenvalue
    once = Lighting(0.1)(image) - image
    assert torch.allclose(once, once[:, :1, :1].expand_as(once))
    coords = shifts @ torch.tensor(IMAGENET_PCA_EIGVEC)  # alpha_i * lambda_i along each eigenvector
    expected = 0.1 * torch.tensor(IMAGENET_PCA_EIGVAL)
    assert coords.std(0) == pytest.approx(expected, rel=0.06)
    assert coords.mean(0).abs().max() < 3 * expected.max() / 4000**0.5
    assert torch.equal(Lighting(0.0)(image), image)


@pytest.mark.unit
def test_scale_jitter_draws_the_shorter_side_from_the_range() -> None:
    from trainer.data.transforms import ScaleJitter

    random.seed(0)
    jitter = ScaleJitter(256, 512, T.InterpolationMode.BILINEAR)
    sides = [min(jitter(_photo()).size) for _ in range(200)]
    assert min(sides) >= 256 and max(sides) <= 512
    assert min(sides) < 290 and max(sides) > 480  # spans the range (uniform integers)
    transform = build_train_transform(
        _augment(crop="scale_jitter", jitter_sizes=[256, 480]),
        resolution=224,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        interpolation="bilinear",
    )
    assert transform(_photo()).shape == (3, 224, 224)


@pytest.mark.unit
def test_paper_pixel_sizes_scale_with_the_resolution() -> None:
    transform = build_train_transform(
        _augment(crop="scale_jitter", jitter_sizes=[256, 512]),
        resolution=112,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        interpolation="bilinear",
    )
    jitter = transform.transforms[0]
    assert (jitter.low, jitter.high) == (128, 256)
    alexnet = build_train_transform(
        _augment(crop="squash_random", resize=256),
        resolution=112,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        interpolation="bilinear",
    )
    assert alexnet.transforms[0].size == (128, 128) and alexnet(_photo()).shape == (3, 112, 112)


@pytest.mark.unit
@pytest.mark.parametrize("policy", ["original", "v0", "rand-m9-mstd0.5"])
def test_auto_augment_policies_keep_shapes_and_change_pixels(policy: str) -> None:
    torch.manual_seed(0)
    random.seed(0)
    transform = build_train_transform(
        _augment(crop="random_resized", scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=0.0, auto_augment=policy),
        resolution=64,
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        interpolation="bilinear",
    )
    plain = build_train_transform(
        _augment(crop="random_resized", scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=0.0),
        resolution=64,
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        interpolation="bilinear",
    )
    image = _photo(64, 64)
    outs = [transform(image) for _ in range(10)]
    assert all(o.shape == (3, 64, 64) for o in outs)
    assert any(not torch.allclose(o, plain(image)) for o in outs), "the policy changed some images"


@pytest.mark.unit
def test_bad_augment_values_name_the_key() -> None:
    kwargs = dict(resolution=64, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear")
    for overrides, key in (
        ({"crop": "zoom"}, "augment.crop"),
        ({"auto_augment": "nonsense"}, "augment.auto_augment"),
        ({"color_jitter": [0.1, 0.2]}, "augment.color_jitter"),
        ({"crop": "scale_jitter", "jitter_sizes": [300, 200]}, "augment.jitter_sizes"),
    ):
        with pytest.raises(ConfigError) as exc:
            build_train_transform(_augment(**overrides), **kwargs)
        assert key in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.unit
def test_data_module_trains_with_the_augment_group_alone(tiny_cfg, tmp_path: Path) -> None:
    chosen = build_datamodule(tiny_cfg("augment=alexnet")).train_augment()
    assert chosen["crop"] == "center_random" and chosen["hflip"] == 0.5 and chosen["lighting_std"] == 0.1
    digits = build_datamodule(tiny_cfg()).train_augment()  # data=sample's own option: 35-100% of the area, no flip
    assert digits["crop"] == "random_resized" and digits["scale"] == [0.35, 1.0] and digits["hflip"] == 0.0
    # built without an augment config (in Python): ImageNet's crop and flip, the augment group's default option
    default = _datamodule(tmp_path).train_augment()
    assert default == {"crop": "random_resized", "scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3), "hflip": 0.5}
    yaml = OmegaConf.load(CONF_DIR / "augment" / "imagenet.yaml")
    assert (yaml.crop, tuple(yaml.scale), tuple(yaml.ratio), yaml.hflip) == tuple(default.values())
