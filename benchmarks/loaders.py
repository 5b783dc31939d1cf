#!/usr/bin/env python
"""Loader throughput: images/s of the training pipeline (decode + RandomResizedCrop 224 + flip + normalise, batches
of 256) for the folder loader and the FFCV loader, on the same images, with the same number of workers, side by
side in one run.

Three sides, timed over whole epochs, one at a time: each round starts each side in a fresh process of its own
(nothing else of the benchmark alive meanwhile), runs one untimed epoch (worker start-up, numba compilation, page
cache) and times `--epochs` epochs; the side going first rotates from round to round:
- folder: torchvision's ImageFolder + DataLoader (PIL decoding, RandomResizedCrop, RandomHorizontalFlip, ToTensor,
  Normalize) with `workers` worker processes, persistent;
- ffcv: a bare ffcv Loader with `workers` threads: RandomResizedCropRGBImageDecoder, RandomHorizontalFlip,
  NormalizeImage (float32), ToTensor, ToTorchImage, QUASI_RANDOM order, OS cache;
- ours: the training loader of `data=imagenet_ffcv` (trainer.data.FFCVDataModule) over the same file, the same
  workers and pipeline;
- ours-fresh (with `--fresh-buffers`): ours with ffcv's own buffer allocation put back (new buffers every epoch),
  which shows what ours costs or saves besides that.

    .venv/bin/python benchmarks/loaders.py                         # 3,000 generated 400x350 JPEGs, workers 1 and 2
    .venv/bin/python benchmarks/loaders.py --imagenet data/imagenet --images 5000   # the first images of ImageNet
    .venv/bin/python benchmarks/loaders.py --workers 1 2 4 --rounds 5 --check       # exit 1 below the targets
    .venv/bin/python benchmarks/loaders.py --device cuda           # FFCV's ToDevice path, feeding the GPU
    .venv/bin/python benchmarks/loaders.py --fresh-buffers         # also ours with ffcv's per-epoch buffers

Without ImageNet the images are generated in a temporary folder: natural image statistics (a 1/f amplitude
spectrum with random phases, colour mostly along luminance), about 400 x 350 pixels, JPEG quality 90 (which the
run says). Also reported: the .beton's size against the JPEGs' and its write time. Targets (the largest worker
count): ffcv >= 1.7x folder; ours >= 0.95x bare ffcv.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FFCV_TARGET, OURS_TARGET = 1.7, 0.95
SIDES = ("folder", "ffcv", "ours")
FRESH = "ours-fresh"


# -- images ------------------------------------------------------------------------------------------------------


def _field(rng: np.random.Generator, h: int, w: int, alpha: float) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spectrum = f**-alpha * np.exp(2j * np.pi * rng.random(f.shape))
    spectrum[0, 0] = 0
    field = np.fft.irfft2(spectrum, s=(h, w))
    return field / (field.std() + 1e-12)


def natural_image(seed: int, size: tuple[int, int] = (400, 350)) -> np.ndarray:
    """An RGB image with natural-image statistics: 1/f amplitude (1/f^2 power) with random phases; colour as a
    strong luminance field plus two weaker opponent fields; a random exposure."""
    rng = np.random.default_rng(seed)
    w = int(size[0] * rng.uniform(0.85, 1.15))
    h = int(size[1] * rng.uniform(0.85, 1.15))
    lum = _field(rng, h, w, rng.uniform(0.9, 1.2))
    red_green = _field(rng, h, w, rng.uniform(1.0, 1.4))
    blue_yellow = _field(rng, h, w, rng.uniform(1.0, 1.4))
    rgb = lum[..., None] * np.array([1.0, 1.0, 1.0])
    rgb += 0.3 * red_green[..., None] * np.array([1.0, -0.8, 0.0])
    rgb += 0.3 * blue_yellow[..., None] * np.array([0.4, 0.4, -1.0])
    rgb = rgb * rng.uniform(35, 55) + rng.uniform(90, 160)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _write_one(job: tuple[int, str, tuple[int, int]]) -> int:
    seed, path, size = job
    Image.fromarray(natural_image(seed, size)).save(path, quality=90)
    return os.path.getsize(path)


def generate(
    root: Path, count: int, classes: int = 10, val_per_class: int = 4, size: tuple[int, int] = (400, 350)
) -> str:
    """`count` training JPEGs (and a few for val) of about `size` (width, height) in ImageNet layout under `root`,
    written by every CPU."""
    jobs = []
    for split, n in (("train", count), ("val", val_per_class * classes)):
        for i in range(n):
            folder = root / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((i + (0 if split == "train" else 10**6), str(folder / f"{i:06d}.JPEG"), size))
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        sizes = pool.map(_write_one, jobs, chunksize=16)
    mean_kib = np.mean(sizes) / 1024
    return (
        f"{count} generated JPEGs with natural-image statistics, ~{size[0]}x{size[1]}, quality 90, "
        f"mean {mean_kib:.0f} KiB"
    )


def link_imagenet(imagenet: Path, root: Path, count: int) -> str:
    """The first `count` training images of ImageNet (round robin over the sorted classes), linked into `root`."""
    from trainer.data.folder import ImageFolderDataset, validate_layout

    classes = validate_layout(imagenet)
    by_class: dict[int, list[str]] = {}
    for path, label in ImageFolderDataset(imagenet / "train", classes).samples:
        by_class.setdefault(label, []).append(path)
    chosen: list[tuple[str, int]] = []
    for i in range(max(len(v) for v in by_class.values())):
        chosen += [(paths[i], label) for label, paths in sorted(by_class.items()) if i < len(paths)]
        if len(chosen) >= count:
            break
    chosen = chosen[:count]
    used = sorted({label for _, label in chosen})
    for split, items in (("train", chosen), ("val", [(by_class[label][-1], label) for label in used])):
        for path, label in items:
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            os.symlink(path, folder / Path(path).name)
    sizes = [os.path.getsize(p) for p, _ in chosen]
    return f"{len(chosen)} ImageNet training images from {imagenet}, mean {np.mean(sizes) / 1024:.0f} KiB"


# -- the three loaders -------------------------------------------------------------------------------------------


def folder_loader(root: Path, workers: int, batch: int, device: torch.device) -> Iterable:
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    transform = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    loader = DataLoader(
        ImageFolder(str(root / "train"), transform=transform),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=True,
        pin_memory=device.type == "cuda",
    )
    if device.type != "cuda":
        return loader
    return _OnDevice(loader, device)


class _OnDevice:
    def __init__(self, loader: Iterable, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def bare_ffcv_loader(beton: Path, workers: int, batch: int, device: torch.device) -> Iterable:
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

    image = [RandomResizedCropRGBImageDecoder((224, 224)), RandomHorizontalFlip()]
    label = [IntDecoder(), ToTensor(), Squeeze(1)]
    if device.type == "cuda":  # ffcv's NormalizeImage needs cupy on the GPU: normalised after loading instead
        image += [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage()]
        label.append(ToDevice(device, non_blocking=True))
    else:
        image += [NormalizeImage(np.array(MEAN) * 255, np.array(STD) * 255, np.float32), ToTensor(), ToTorchImage()]
    loader = Loader(
        str(beton),
        batch_size=batch,
        num_workers=workers,
        order=OrderOption.QUASI_RANDOM,
        os_cache=True,
        drop_last=True,
        seed=0,  # the order seed the data module uses (the run's seed)
        pipelines={"image": image, "label": label},
    )
    if device.type != "cuda":
        return loader
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255

    class Normalised:
        def __iter__(self):
            for x, y in loader:
                yield ((x.float() - mean) / std).half(), y

    return Normalised()


def our_loader(root: Path, beton: Path, val: Path, workers: int, batch: int, device: torch.device) -> Iterable:
    from hydra import compose, initialize_config_dir

    from trainer.builders import build_datamodule

    overrides = [
        "model=resnet50",
        "data=imagenet_ffcv",
        f"data.root={root}",
        f"data.train_beton={beton}",
        f"data.val_beton={val}",
        "data.num_classes=null",
        "data.resolution=224",
        f"data.batch_size={batch}",
        f"data.num_workers={workers}",
        f"data.mean={list(MEAN)}",
        f"data.std={list(STD)}",
        "data.device_dtype=float16",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = build_datamodule(cfg)
    datamodule.loader_device = device
    datamodule.setup("fit")
    return datamodule.train_dataloader()


# -- timing ------------------------------------------------------------------------------------------------------


def time_epoch(loader: Iterable, device: torch.device) -> float:
    """Images per second over one epoch, from asking for the first batch to receiving the last."""
    images = 0
    start = time.perf_counter()
    for x, _ in loader:
        images += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def _side(name: str, spec: dict, conn) -> None:
    """One side in a process of its own: build its loader, run the untimed epoch, then time an epoch per request.
    (On this machine an ffcv loader ran up to 1.5x slower while another ffcv loader was alive, in the same process
    or another, even idle; and the bare side must not see this project's changes to ffcv.)"""
    try:
        torch.set_num_threads(spec["threads"])
        device = torch.device(spec["device"])
        if name == "folder":
            loader = folder_loader(spec["root"], spec["workers"], spec["batch"], device)
        elif name == "ffcv":
            loader = bare_ffcv_loader(spec["beton"], spec["workers"], spec["batch"], device)
        else:
            from trainer.config import register_configs

            register_configs()
            loader = our_loader(spec["root"], spec["beton"], spec["val"], spec["workers"], spec["batch"], device)
            if name == FRESH:  # ffcv's allocation: new buffers for every epoch
                from ffcv.pipeline.graph import Graph

                loader.graph.allocate_memory = Graph.allocate_memory.__get__(loader.graph)
        time_epoch(loader, device)  # untimed: worker start-up, numba compilation, page cache
        conn.send("ready")
        while conn.recv() == "epoch":
            conn.send(time_epoch(loader, device))
    except Exception as exc:
        conn.send(f"error: {name}: {type(exc).__name__}: {exc}")


class Side:
    def __init__(self, name: str, spec: dict) -> None:
        self.name = name
        self.conn, child = mp.get_context("spawn").Pipe()
        self.process = mp.get_context("spawn").Process(target=_side, args=(name, spec, child))
        self.process.start()

    def _reply(self) -> Any:
        reply = self.conn.recv()
        if isinstance(reply, str) and reply.startswith("error"):
            raise RuntimeError(reply)
        return reply

    def ready(self) -> None:
        self._reply()

    def epoch(self) -> float:
        self.conn.send("epoch")
        return float(self._reply())

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send("stop")
        self.process.join(60)
        if self.process.is_alive():
            self.process.terminate()


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} ({min(values):.0f}-{max(values):.0f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="training images (default 3000)")
    parser.add_argument("--imagenet", type=Path, help="an ImageNet-layout folder to take the images from")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per worker count (a fresh process per side)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per side and round")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--write-mode", default="jpg", help="jpg (both loaders decode JPEG, default) | proportion | raw | smart"
    )
    parser.add_argument("--compress-probability", type=float, default=0.5)
    parser.add_argument("--device", default="cpu", help="cpu (default) | cuda: the FFCV sides use the ToDevice path")
    parser.add_argument("--keep", type=Path, help="keep the images and .beton files in this folder")
    parser.add_argument(
        "--fresh-buffers", action="store_true", help=f"a fourth side, {FRESH}: ours with ffcv's per-epoch buffers"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--json", type=Path, help="also write every measured rate and the verdicts to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device here", file=sys.stderr)
        return 2

    from trainer.data.ffcv import WriteOptions, require_ffcv, write_beton
    from trainer.data.folder import validate_layout

    require_ffcv("benchmarks/loaders.py")
    work = args.keep or Path(tempfile.mkdtemp(prefix="loaders-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        root = work / "images"
        if not (root / "train").is_dir():
            start = time.perf_counter()
            source = link_imagenet(args.imagenet, root, args.images) if args.imagenet else generate(root, args.images)
            print(f"images: {source} ({time.perf_counter() - start:.0f} s) in {root}", flush=True)
            source_text = source
        else:
            source_text = f"reused from {root}"
            print(f"images: reusing {root}", flush=True)
        classes = validate_layout(root)
        options = WriteOptions(
            write_mode=args.write_mode,
            max_resolution=500,
            jpeg_quality=90,
            compress_probability=args.compress_probability,
        )
        beton, val = work / "train.beton", work / "val.beton"
        result = write_beton(root / "train", beton, classes, options, overwrite=True, progress=False)
        write_beton(root / "val", val, classes, options, overwrite=True, progress=False)
        print(
            f".beton ({args.write_mode}, max 500 px, quality 90"
            + (f", compress {args.compress_probability}" if args.write_mode == "proportion" else "")
            + f"): {result.size_bytes / 2**20:.1f} MiB for {result.source_bytes / 2**20:.1f} MiB of JPEGs "
            f"({result.size_bytes / result.source_bytes:.2f}x), written in {result.seconds:.1f} s "
            f"({result.images_per_sec:.0f} images/s, {os.cpu_count()} writer processes)",
            flush=True,
        )
        print(
            f"pipeline: decode + RandomResizedCrop 224 + flip + normalise, batch {args.batch_size}, "
            f"{len(os.sched_getaffinity(0))} CPUs, device {device}, load average {os.getloadavg()[0]:.2f}; "
            f"images/s median (min-max) over {args.rounds} x {args.epochs} epochs",
            flush=True,
        )
        sides = (*SIDES, FRESH) if args.fresh_buffers else SIDES
        header = f"{'workers':>7}  " + "".join(f"{name:>19}  " for name in sides)
        header += f"{'ffcv/folder':>11}  {'ours/ffcv':>9}" + (f"  {'fresh/ffcv':>10}" if args.fresh_buffers else "")
        rows, summary, measured = [], {}, {}
        for workers in args.workers:
            spec = {
                "root": root,
                "beton": beton,
                "val": val,
                "workers": workers,
                "batch": args.batch_size,
                "device": args.device,
                "threads": torch.get_num_threads(),
            }
            rates: dict[str, list[float]] = {name: [] for name in sides}
            for r in range(args.rounds):
                shift = r % len(sides)
                order = sides[shift:] + sides[:shift]  # who goes first rotates: drift hits every side
                for name in order:
                    side = Side(name, spec)  # alone: nothing else of this benchmark is alive meanwhile
                    try:
                        side.ready()
                        rates[name] += [side.epoch() for _ in range(args.epochs)]
                    finally:
                        side.stop()
            medians = {name: statistics.median(v) for name, v in rates.items()}
            summary[workers] = medians
            measured[workers] = rates
            rows.append(
                f"{workers:>7}  "
                + "".join(f"{fmt(rates[name]):>19}  " for name in sides)
                + f"{medians['ffcv'] / medians['folder']:>10.2f}x  {medians['ours'] / medians['ffcv']:>8.3f}"
                + (f"  {medians[FRESH] / medians['ffcv']:>10.3f}" if args.fresh_buffers else "")
            )
            per_worker = "  ".join(f"{name} {medians[name] / workers:.1f}" for name in sides)
            rows.append(f"{'':>7}  per worker: {per_worker}")
            print(rows[-2] + "\n" + rows[-1], flush=True)
        print("\n" + header + "\n" + "\n".join(rows))
        top = summary[max(summary)]
        ffcv_ratio, ours_ratio = top["ffcv"] / top["folder"], top["ours"] / top["ffcv"]
        passed = {True: "PASS", False: "FAIL"}
        verdict = [
            f"ffcv/folder {ffcv_ratio:.2f}x (target >= {FFCV_TARGET}): {passed[ffcv_ratio >= FFCV_TARGET]}",
            f"ours/ffcv {ours_ratio:.3f} (target >= {OURS_TARGET}): {passed[ours_ratio >= OURS_TARGET]}",
        ]
        print(f"at {max(summary)} workers: " + "; ".join(verdict) + f" (load average {os.getloadavg()[0]:.2f})")
        if args.json:
            from importlib.metadata import version

            report = {
                "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
                "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "environment": {
                    "cpus": len(os.sched_getaffinity(0)),
                    "processor": _cpu_name(),
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "ffcv": version("ffcv"),  # (ffcv.__version__ says 0.0.3rc1)
                    "device": str(device),
                    "load_average_end": os.getloadavg()[0],
                },
                "images": source_text,
                "beton": {
                    "write_mode": args.write_mode,
                    "bytes": result.size_bytes,
                    "source_bytes": result.source_bytes,
                    "seconds": result.seconds,
                },
                "batch_size": args.batch_size,
                "rounds": args.rounds,
                "epochs": args.epochs,
                "images_per_sec": {str(w): r for w, r in measured.items()},
                "medians": {str(w): m for w, m in summary.items()},
                "ffcv_over_folder": ffcv_ratio,
                "ours_over_ffcv": ours_ratio,
                "targets": {"ffcv_over_folder": FFCV_TARGET, "ours_over_ffcv": OURS_TARGET},
                "passed": ffcv_ratio >= FFCV_TARGET and ours_ratio >= OURS_TARGET,
            }
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        if args.check and (ffcv_ratio < FFCV_TARGET or ours_ratio < OURS_TARGET):
            return 1
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    # here, not at the top: each side runs in a spawned process that imports this file again, and the folder and
    # bare ffcv sides need neither this project nor the seconds its import takes (ours imports it in our_loader)
    from trainer.cli import prepare, user_errors

    prepare(CONF_DIR, "train", [])
    with user_errors():
        sys.exit(main())
