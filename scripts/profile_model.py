#!/usr/bin/env python
"""Profile catalogue models: parameters, multiply-adds, forward activation memory, training memory, latency.

    python scripts/profile_model.py model=vgg16                    # one model; prints a summary, writes JSON + plots
    python scripts/profile_model.py model=resnet50 --layers        # and a per-layer table
    python scripts/profile_model.py model=all --out runs/profile   # every catalogue model (no latency unless --latency)
    python scripts/profile_model.py model=resnet18 --resolution 32 --batch-sizes 1,2,4
    python scripts/profile_model.py model=vgg16 device=cpu --full-sweep  # on the CPU: batches 1-64 (default: 1, 8)

Each step prints one line to stderr as it starts (counting, per-layer table, each latency batch), so a long run on
the CPU is never silent.

Counting rules (stated, as every published figure depends on them):
- activations: the elements of the input plus every leaf module's output, except outputs that alias their input
  (in-place activations, Identity, Dropout, Flatten). This is the rule of the per-layer table in the CS231n VGG-16
  slide (conv and pool outputs, ReLUs in place): 15.24 M values per 224 px image. (The slide's "TOTAL memory: 24M"
  does not follow from its own table, whose rows add up to 15.2 M; counting each ReLU output too gives 28.7 M.)
- training memory: on CUDA, the peak `torch.cuda.max_memory_allocated` over one SGD step of a batch; on the CPU, an
  estimate: weights, gradients and SGD momentum (3 x params x 4 B) plus the batch's activations kept for backward
  (batch x activation values x 4 B).
- latency: the median of `--repeats` timed forward passes after `--warmup` untimed ones, in eval mode, no grad.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from trainer.models import create_model, get_entry, list_models
from trainer.models.complexity import measure, meta_model

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "complexity.json"
ALIASING = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten)
BYTES = 4  # float32


FULL_SWEEP = "1,2,4,8,16,32,64"
CPU_SWEEP = "1,8"


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _aliases_input(module: nn.Module) -> bool:
    return isinstance(module, ALIASING) or getattr(module, "inplace", False) is True


def layer_table(model: nn.Module, resolution: int) -> list[dict[str, Any]]:
    """Each leaf module's output shape, its element count and whether it counts as a new activation."""
    rows: list[dict[str, Any]] = []
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            rows.append(
                {
                    "layer": names[module],
                    "type": type(module).__name__,
                    "shape": list(output.shape[1:]),
                    "values": output[0].numel(),
                    "params": sum(p.numel() for p in module.parameters(recurse=False)),
                    "counted": not _aliases_input(module),
                }
            )

    handles = [m.register_forward_hook(hook) for m in model.modules() if _is_leaf(m)]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, resolution, resolution, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return rows


def activation_values(rows: list[dict[str, Any]], resolution: int) -> int:
    """Forward activations of one image: the input plus every counted leaf output (see the module docstring)."""
    return 3 * resolution * resolution + sum(r["values"] for r in rows if r["counted"])


def training_memory(name: str, resolution: int, batch: int, params: int, activations: int, device: str) -> dict:
    if device == "cuda":
        model = create_model(name).to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.cuda.reset_peak_memory_stats()
        x = torch.randn(batch, 3, resolution, resolution, device=device)
        out = model(x)
        out = out[0] if isinstance(out, tuple | list) else out
        out.logsumexp(-1).mean().backward()
        optimizer.step()
        torch.cuda.synchronize()
        return {"bytes": torch.cuda.max_memory_allocated(), "method": "torch.cuda.max_memory_allocated, one SGD step"}
    estimate = 3 * params * BYTES + batch * activations * BYTES
    return {"bytes": estimate, "method": "estimate: 3 x params x 4 B + batch x activations x 4 B"}


def latency(name: str, resolution: int, batch_sizes: list[int], device: str, warmup: int, repeats: int) -> list:
    model = create_model(name).to(device).eval()
    rows = []
    for batch in batch_sizes:
        step(f"{name}: latency at batch {batch} ({warmup} warm-up + {repeats} timed forwards on {device})")
        x = torch.randn(batch, 3, resolution, resolution, device=device)
        times = []
        with torch.inference_mode():
            for i in range(warmup + repeats):
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(x)
                if device == "cuda":
                    torch.cuda.synchronize()
                if i >= warmup:
                    times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rows.append(
            {
                "batch": batch,
                "seconds": seconds,
                "ms_per_image": 1000 * seconds / batch,
                "images_per_sec": batch / seconds,
            }
        )
    return rows


def step(message: str) -> None:
    """One progress line per step, on stderr (stdout keeps the summary)."""
    print(f"... {message}", file=sys.stderr, flush=True)


def profile(name: str, args: argparse.Namespace) -> dict[str, Any]:
    resolution = args.resolution or get_entry(name).resolution
    step(f"{name}: parameters, multiply-adds and activations at {resolution} px (meta device)")
    model = meta_model(name)
    params = sum(p.numel() for p in model.parameters())  # what training holds in memory, auxiliary heads included
    measured = measure(model, resolution)
    rows = layer_table(model, resolution)
    activations = activation_values(rows, resolution)
    result: dict[str, Any] = {
        "model": name,
        "resolution": resolution,
        "params": measured.params,  # the inference network, as the papers count
        "aux_params": measured.aux_params,  # auxiliary heads (training only)
        "macs": measured.macs,
        "activations": activations,
        "activation_bytes": activations * BYTES,
        "train_batch": args.train_batch,
    }
    step(f"{name}: training memory at batch {args.train_batch} on {args.device}")
    result["training_memory"] = training_memory(name, resolution, args.train_batch, params, activations, args.device)
    if args.layers:
        result["layers"] = rows
    if args.latency:
        result["device"] = args.device
        result["latency"] = latency(name, resolution, args.batch_sizes, args.device, args.warmup, args.repeats)
    return result


def plot_accuracy_vs_macs(path: Path) -> int:
    """Paper top-1 against GMACs (log x), bubble area = parameters, for every catalogue model with a paper top-1.
    MACs come from the golden file (measured at the native resolution); returns the number of models drawn."""
    import matplotlib.pyplot as plt

    macs = json.loads(GOLDEN.read_text())["models"]
    points = [(get_entry(n), macs[n]["macs"]) for n in list_models() if get_entry(n).top1 is not None and n in macs]
    fig, ax = plt.subplots(figsize=(10, 7))
    for entry, m in points:
        ax.scatter(m / 1e9, entry.top1, s=entry.params / 1e5, alpha=0.4)
        ax.annotate(entry.name, (m / 1e9, entry.top1), fontsize=6, ha="center")
    ax.set_xscale("log")
    ax.set_xlabel("GMACs per image (native resolution)")
    ax.set_ylabel("paper top-1 (%)")
    ax.set_title("Catalogue models: paper top-1 vs compute (bubble area = parameters)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(points)


def plot_latency(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in results:
        if r.get("latency"):
            ax.plot(
                [p["batch"] for p in r["latency"]], [p["ms_per_image"] for p in r["latency"]], "o-", label=r["model"]
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("ms per image")
    ax.set_title(f"Inference time per image ({results[0].get('device', '')})")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [
        f"--{a}" if a.split("=", 1)[0] in ("model", "resolution", "out", "device") and "=" in a else a for a in argv
    ]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50", help="a catalogue name, or 'all'")
    parser.add_argument("--resolution", type=int, default=None, help="input size (default: the model's native)")
    parser.add_argument("--layers", action="store_true", help="print (and save) the per-layer table")
    parser.add_argument(
        "--latency",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time inference per batch size (default: on for one model, off for all)",
    )
    parser.add_argument(
        "--batch-sizes",
        default=None,
        help=f"latency batch sizes (default: {FULL_SWEEP} on CUDA, {CPU_SWEEP} on the CPU)",
    )
    parser.add_argument("--full-sweep", action="store_true", help=f"on the CPU too: batches {FULL_SWEEP}")
    parser.add_argument("--train-batch", type=int, default=32, help="batch for the training-memory figure")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "profile")
    args = parser.parse_args(argv)
    if args.batch_sizes is None:  # the CPU's sweep is short unless asked for: batch 64 of VGG-16 takes minutes
        args.batch_sizes = FULL_SWEEP if args.device != "cpu" or args.full_sweep else CPU_SWEEP
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b]
    if args.latency is None:
        args.latency = args.model != "all"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    names = list_models() if args.model == "all" else [get_entry(args.model).name]
    results = [profile(name, args) for name in names]
    args.out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    plots = {"accuracy_vs_macs": str(args.out / "accuracy_vs_macs.png")}
    plot_accuracy_vs_macs(Path(plots["accuracy_vs_macs"]))
    if args.latency:
        plots["latency"] = str(args.out / "latency_vs_batch.png")
        plot_latency(results, Path(plots["latency"]))
    report = {"models": results, "plots": plots}
    (args.out / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        mem = r["training_memory"]
        print(
            f"{r['model']:<24} {r['resolution']:>4}px  params {r['params'] / 1e6:8.2f} M  "
            + (f"(+ aux heads {r['aux_params'] / 1e6:.2f} M)  " if r["aux_params"] else "")
            + f"MACs {r['macs'] / 1e9:7.3f} G  "
            f"activations {r['activations'] / 1e6:7.2f} M ({r['activation_bytes'] / 2**20:.1f} MiB/image)  "
            f"train batch {r['train_batch']}: {mem['bytes'] / 2**30:.2f} GiB ({mem['method']})"
        )
        if args.layers:
            for row in r["layers"]:
                mark = "" if row["counted"] else "  (aliases its input: not counted)"
                print(f"  {row['layer']:<40} {row['type']:<20} {row['shape']!s:<20} {row['values']:>12,}{mark}")
        for p in r.get("latency", []):
            print(f"  batch {p['batch']:>3}: {p['ms_per_image']:8.3f} ms/image  {p['images_per_sec']:9.1f} images/s")
    print(f"results: {args.out / 'profile.json'}")
    return report


if __name__ == "__main__":
    main()
