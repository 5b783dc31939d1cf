#!/usr/bin/env python
"""Training images/s of one CIFAR epoch of `resnet56_cifar` (recipe=resnet_cifar: batch 128, augment=cifar) with
the archive loader (data=cifar10: PIL pad-crop-flip in DataLoader workers) and the FFCV loader (data=cifar10_ffcv:
raw-pixel .beton files, ffcv's RandomTranslate and flip), on this machine's CPU or GPU.

    .venv/bin/python benchmarks/cifar_epoch.py                      # a generated 5,000-image archive, CPU
    .venv/bin/python benchmarks/cifar_epoch.py --root data/cifar10  # the real archive (one 50,000-image epoch)
    .venv/bin/python benchmarks/cifar_epoch.py --images 50000 --accelerator gpu

Each loader trains one epoch (`train/images_per_sec`: the epoch's images over its wall time, the model's forward,
backward and step included) in its own run; validation is limited to one batch. Without `--root` the archive is
generated in a temporary folder in the python-version format: random pixels, random labels (the speed does not
depend on them). The .beton files are written once before the runs (not timed).
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers' compose_config: the config as train.py composes it

from tests.helpers import compose_config  # noqa: E402
from trainer.data.ffcv import write_from_config  # noqa: E402
from trainer.train import train  # noqa: E402


def generate_archive(root: Path, train_images: int, test_images: int = 1000, seed: int = 0) -> Path:
    """<root>/cifar-10-python.tar.gz with `train_images` split over 5 batches, random pixels and labels."""
    rng = np.random.default_rng(seed)
    per_batch = train_images // 5
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
        for name in names:
            n = test_images if name == "test_batch" else per_batch
            content = {"labels": rng.integers(0, 10, n).tolist(), "data": rng.integers(0, 256, (n, 3072), np.uint8)}
            _add(tar, name, content)
        _add(tar, "batches.meta", {"label_names": [f"class_{i}" for i in range(10)]})
    return root


def _add(tar: tarfile.TarFile, name: str, content: dict) -> None:
    data = pickle.dumps(content, protocol=2)
    info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def run(loader: str, root: Path, work: Path, args: argparse.Namespace) -> dict:
    common = [
        "model=resnet56_cifar",
        "recipe=resnet_cifar",
        f"data.root={root}",
        f"data.num_workers={args.workers}",
        f"trainer.accelerator={args.accelerator}",
        "trainer.devices=1",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
        "callbacks.checkpoint=null",
        "callbacks.last_checkpoint=null",
        "+trainer.enable_checkpointing=false",
        f"run_dir={work}/run_{loader}",
    ]
    if loader == "archive":
        overrides = ["data=cifar10", *common]
    else:
        overrides = [
            "data=cifar10_ffcv",
            f"data.train_beton={work}/train.beton",
            f"data.val_beton={work}/val.beton",
            *common,
        ]
    results = train(compose_config(overrides))
    return {"loader": loader, "images_per_sec": results["images_per_sec"], "top1": results["top1"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="a folder holding the real CIFAR-10 archive")
    parser.add_argument("--images", type=int, default=5000, help="training images of the generated archive")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cifar_epoch_") as tmp:
        work = Path(tmp)
        root = args.root or generate_archive(work / "cifar10", args.images)
        for split in ("train", "val"):
            write_from_config(
                compose_config(
                    [
                        "data=cifar10",
                        f"data.root={root}",
                        f"split={split}",
                        f"out={work}/{split}.beton",
                        "write_mode=raw",
                        "max_resolution=null",
                        f"num_workers={max(args.workers, 1)}",
                        "progress=false",
                    ],
                    config_name="write_ffcv",
                )
            )
        rows = [run(loader, root, work, args) for loader in ("archive", "ffcv")]
    for row in rows:
        print(f"{row['loader']:>8}: {row['images_per_sec']:.1f} images/s (one epoch, resnet56_cifar, batch 128)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
