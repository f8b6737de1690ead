#!/usr/bin/env bash
# Developer utility: create .venv in the repository root and install wsiproc with its tests'
# tools. Idempotent: a second run only checks. Uses the wheels' bundled OpenSlide and libvips,
# so no system packages are needed. torch is pinned to the CPU build (a CUDA machine can
# install its own torch first; the pin is then already satisfied or replaced by pip).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import wsiproc, torch, h5py, snakemake, snakemake_executor_plugin_slurm, openslide, pyvips, pytest, websocket, pydicom" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    .venv/bin/python -m pip install --quiet -e ".[test]"
fi
