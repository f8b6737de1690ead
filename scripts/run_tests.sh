#!/usr/bin/env bash
# The README's test command: install, then run the whole test suite (workflow runs included),
# in two environments:
#   1. .venv (scripts/install.sh): everything except the tests marked `timm`;
#   2. .venv-timm (scripts/install_timm.sh): the tests marked `timm` (timm encoders with local
#      weights; timm needs torchvision, which does not import beside .venv's CPU torch).
# Arguments go to both pytest runs (select with -k: a -m of yours would replace the split). WSIPROC_TIMM_TESTS=0 skips building and running part 2.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PATH="$PWD/.venv/bin:$PATH" python -m pytest -m "not timm" "$@"
if [ "${WSIPROC_TIMM_TESTS:-1}" != 0 ]; then
    bash scripts/install_timm.sh
    PATH="$PWD/.venv-timm/bin:$PATH" python -m pytest -m timm "$@"
fi
