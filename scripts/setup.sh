#!/usr/bin/env bash
# Set up everything the project needs in a virtual environment (default .venv): the system packages FFCV builds
# against, PyTorch, then the package with its dev and ffcv extras. Safe to run again. TORCH_SPEC chooses the
# PyTorch build (default: the one this project's machines and CI use; elsewhere e.g. TORCH_SPEC="torch torchvision").
set -euo pipefail
venv="${1:-.venv}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
# constraints.txt pins every package to the versions CI tested, so a fresh machine next month installs the same set;
# CONSTRAINTS= (empty) installs the newest versions pyproject.toml allows instead.
constraints="${CONSTRAINTS-constraints.txt}"
pin=()
[ -n "$constraints" ] && [ -z "${TORCH_SPEC:-}" ] && pin=(-c "$constraints")

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "error: Python >= 3.10 required" >&2; exit 1; }

# System packages: FFCV's build needs a JPEG and an OpenCV library. Installed when missing and we are root on a
# Debian/Ubuntu machine (CI, containers); elsewhere the line to run is printed and the ffcv extra is skipped.
extras="dev,ffcv,slurm"
apt_packages="pkg-config libturbojpeg0-dev libopencv-dev"
# WITH_SLURM=1 (.ci/run): also Debian's SLURM daemons and munge, for the tests' one-node cluster on localhost
# (scripts/slurm_local.sh). Without them the SLURM tests skip, saying so.
[ "${WITH_SLURM:-0}" = 1 ] && apt_packages="$apt_packages slurmctld slurmd slurm-client munge"
missing=""
for p in $apt_packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian packages:$missing"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "warning: FFCV needs the system packages:$missing (sudo apt-get install$missing); setting up without ffcv" >&2
        extras="dev,slurm"
    fi
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install --quiet "${pin[@]}" $torch_spec
"$venv/bin/python" -m pip install --quiet "${pin[@]}" -e ".[$extras]"
"$venv/bin/python" -c 'import torch, torchvision, timm, lightning, hydra; print(f"torch {torch.__version__}, timm {timm.__version__}, lightning {lightning.__version__}")'
