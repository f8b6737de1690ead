#!/usr/bin/env bash
# The README's test command: install, then run the whole test suite (workflow runs included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
python -m pytest "$@"
