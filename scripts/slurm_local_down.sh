#!/usr/bin/env bash
# Developer utility: stop the private test cluster that scripts/slurm_local_up.sh [DIR] started,
# by the pid files in its directory (slurmd, slurmctld, then its own munged). Nothing else of
# the machine's is touched; DIR itself is left for its logs.
DIR=$(realpath -m "${1:-${SLURM_LOCAL_DIR:-/tmp/wsiproc-slurm-$(id -u)}}")
for f in "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid" "$DIR/munge/munged.pid"; do
  if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
    p=$(cat "$f"); kill "$p"; for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  fi
done
