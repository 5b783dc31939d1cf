#!/usr/bin/env python
"""torch.compile on the smallest member (fewest parameters) of every catalogue family: one training-mode forward
and backward at the member's resolution, batch 8, bf16 autocast and channels_last on CUDA, through the project's
own `compile_model` (trainer.engine.fast_paths), and what became of it:

- compiled: the forward and backward ran compiled;
- eager_fallback: compiling the forward failed and `compile_model` fell back to eager (its warning is kept): the
  model trains, slower;
- failed: the compiled step raised and no fallback caught it (e.g. the backward's compilation), so training this
  model with compile on would crash; `eager_ok` says whether the same step runs without compiling.

    .venv/bin/python benchmarks/compile_families.py --json compile.json                  # every family, on CUDA
    .venv/bin/python benchmarks/compile_families.py --families resnet,vgg --device cpu --backend eager \\
        --smallest-input                                                                 # a quick CPU check

benchmarks/gpu_check.py runs it once per family, several at a time, each under a time limit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trainer.engine import split_outputs
from trainer.engine.fast_paths import compile_model, is_compiled
from trainer.models import create_model, get_entry, list_models

FALLBACK_WARNING = "torch.compile failed for model"  # the start of compile_model's warning


def smallest_members() -> dict[str, str]:
    """Each family's catalogue member with the fewest parameters (ties: the first name in sorted order)."""
    members: dict[str, str] = {}
    for name in list_models():  # sorted
        family, params = get_entry(name).family, get_entry(name).params
        if family not in members or params < get_entry(members[family]).params:
            members[family] = name
    return dict(sorted(members.items()))


def first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"[:300]


def train_step(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype) -> None:
    """Forward (every head: auxiliary classifiers train too) and backward."""
    autocast = torch.autocast(inputs.device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with autocast:
        main, aux = split_outputs(model(inputs))
        loss = sum(F.cross_entropy(logits.float(), targets) for logits in (main, *aux))
    loss.backward()
    if inputs.device.type == "cuda":
        torch.cuda.synchronize(inputs.device)


def check(
    name: str, device: torch.device, batch_size: int, resolution: int, dtype: torch.dtype, backend: str
) -> dict[str, Any]:
    torch.compiler.reset()  # no graphs or guards left from the previous model
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000).to(device, memory_format=memory_format).train()
    inputs = torch.randn(batch_size, 3, resolution, resolution, device=device).contiguous(memory_format=memory_format)
    targets = torch.randint(0, 1000, (batch_size,), device=device)
    result: dict[str, Any] = {"model": name, "resolution": resolution, "batch_size": batch_size}
    compile_model(model, name, backend=backend)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            train_step(model, inputs, targets, dtype)
            error = None
        except Exception as e:  # any error of the compiled step is the finding
            error = e
    result["seconds"] = time.perf_counter() - start
    fallbacks = [str(w.message) for w in caught if str(w.message).startswith(FALLBACK_WARNING)]
    if error is not None:
        torch.manual_seed(0)
        eager = create_model(name, num_classes=1000).to(device, memory_format=memory_format).train()
        try:
            train_step(eager, inputs, targets, dtype)
            eager_ok = True
        except Exception:  # the model's own error: reported beside the compiled one
            eager_ok = False
        result.update(status="failed", error=first_line(error), eager_ok=eager_ok)
    elif fallbacks or not is_compiled(model):
        result.update(status="eager_fallback", warning=fallbacks[0] if fallbacks else "not compiled")
    else:
        result["status"] = "compiled"
    result["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", help="comma-separated catalogue families (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), help="autocast (default bfloat16 on CUDA)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument(
        "--smallest-input", action="store_true", help="each model's smallest accepted input (>= 32 px), not its own"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    members = smallest_members()
    families = args.families.split(",") if args.families else list(members)
    if unknown := [f for f in families if f not in members]:
        parser.error(f"unknown family '{unknown[0]}' (one of {', '.join(members)})")
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    results = {}
    for family in families:
        entry = get_entry(members[family])
        resolution = max(entry.min_resolution, 32) if args.smallest_input else entry.resolution
        results[family] = {
            "family": family,
            **check(entry.name, device, args.batch_size, resolution, dtype, args.backend),
            "dtype": str(dtype).removeprefix("torch."),
            "backend": args.backend,
        }
        row = results[family]
        note = row.get("error") or row.get("warning") or ""
        print(f"{family:<14} {row['model']:<24} {row['status']:<15} {row['seconds']:7.1f} s  {note}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "torch": torch.__version__, "families": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
