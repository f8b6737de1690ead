#!/usr/bin/env bash
# Developer utility: stop the daemons started by scripts/slurm_local_up.sh, by their pid files.
for f in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
  if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
    p=$(cat "$f"); kill "$p"; for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  fi
done
