#!/usr/bin/env bash
# The README's demo: install, generate the demo cohort in demo/, run the whole workflow on it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
wsiproc demo demo
snakemake --cores "${CORES:-2}" --configfile demo/config.yaml "$@"
echo "demo done: open demo/results/report.html"
