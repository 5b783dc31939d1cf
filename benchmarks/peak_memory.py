#!/usr/bin/env python
"""Run a Python script (or `-m module`) as `python` would, then write its peak CUDA memory to a JSON file:

    python benchmarks/peak_memory.py <peak.json> train.py model=resnet50 ...
    python benchmarks/peak_memory.py <peak.json> -m pytest -m gpu

The figure is `torch.cuda.max_memory_allocated()` of this process (the largest over its devices; what the caching
allocator handed to tensors, not what nvidia-smi shows), or null where the run never initialised CUDA. It is
written at exit, also when the script exits with an error; a process killed from outside writes nothing.
benchmarks/gpu_check.py runs each of its commands through this.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
from pathlib import Path


def peak_bytes() -> int | None:
    if "torch" not in sys.modules:  # never imported: no CUDA either
        return None
    import torch

    if not torch.cuda.is_initialized():
        return None
    return max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))


def write_peak(path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"peak_gpu_memory_bytes": peak_bytes()}) + "\n")
    os.replace(tmp, path)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or (argv[1] == "-m" and len(argv) < 3):
        sys.exit("usage: peak_memory.py <peak.json> (<script.py> | -m <module>) [args ...]")
    atexit.register(write_peak, Path(argv[0]))
    if argv[1] == "-m":
        sys.argv = [argv[2], *argv[3:]]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    else:
        script = Path(argv[1]).resolve()
        sys.argv = [str(script), *argv[2:]]
        sys.path[0] = str(script.parent)  # as `python script.py` puts the script's folder first
        runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
