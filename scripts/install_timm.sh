#!/usr/bin/env bash
# Developer utility: create .venv-timm, the second test environment for the encoders built from
# a timm architecture + local weights (tests marked `timm`). timm needs torchvision, and PyPI's
# torchvision does not import beside the CPU torch 2.13.0 of .venv, so timm lives apart:
#   x86_64:  torch 2.14.1 + torchvision 0.29.1 (a CUDA build that also runs on the CPU; pip
#            takes both from the machine's local wheel store where there is one)
#   aarch64: torch 2.9.1 + torchvision 0.24.1 (a CPU build)
# then wsiproc in editable mode with its `timm` and `test` extras. Idempotent: a second run
# only checks. scripts/run_tests.sh calls it unless WSIPROC_TIMM_TESTS=0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
case "$(uname -m)" in
    x86_64) TORCH=("torch==2.14.1" "torchvision==0.29.1") ;;
    aarch64 | arm64) TORCH=("torch==2.9.1" "torchvision==0.24.1") ;;
    *) echo "error: scripts/install_timm.sh: no torch/torchvision pin for $(uname -m)" >&2; exit 1 ;;
esac
if [ ! -x .venv-timm/bin/python ]; then
    "$PY" -m venv .venv-timm
fi
if ! .venv-timm/bin/python -c "import wsiproc, torch, torchvision, timm, safetensors, openslide, h5py, pytest" 2>/dev/null; then
    .venv-timm/bin/python -m pip install --quiet --upgrade pip
    .venv-timm/bin/python -m pip install --quiet "${TORCH[@]}"
    .venv-timm/bin/python -m pip install --quiet -e ".[timm,test]"
fi
