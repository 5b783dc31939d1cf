#!/usr/bin/env bash
# Set up everything the project needs in a virtual environment (default .venv): PyTorch, then the package with
# its dev extras. Safe to run again. TORCH_SPEC chooses the PyTorch build (default: the one this project's
# machines and CI use; elsewhere e.g. TORCH_SPEC="torch torchvision").
set -euo pipefail
venv="${1:-.venv}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "error: Python >= 3.10 required" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install --quiet $torch_spec
"$venv/bin/python" -m pip install --quiet -e ".[dev]"
"$venv/bin/python" -c 'import torch, torchvision, timm, lightning, hydra; print(f"torch {torch.__version__}, timm {timm.__version__}, lightning {lightning.__version__}")'
