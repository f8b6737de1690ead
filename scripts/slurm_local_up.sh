#!/usr/bin/env bash
# Developer utility (tests/test_slurm.py runs it): a one-node SLURM test cluster on localhost
# (Debian 12, root, no systemd) that lives entirely in one private directory, so it runs on a
# server whose own SLURM and munge are configured and running: it neither reads nor writes
# /etc/slurm, /etc/munge, /run or /var/log, and needs no system slurmctld or munged.
#
#   bash scripts/slurm_local_up.sh [DIR]    # DIR: $SLURM_LOCAL_DIR, else /tmp/wsiproc-slurm-$UID
#   . DIR/env.sh                            # then sbatch, srun, squeue, snakemake use it
#   bash scripts/slurm_local_down.sh [DIR]  # stops its daemons by their pid files
#
# DIR holds:
#   slurm.conf   the daemons get it with -f, every client through SLURM_CONF; its own
#                ClusterName, ports picked free at start-up, AuthInfo pointing at the munged below
#   munge/       a private munged: its own key, socket, pid, seed and log file
#   state/ spool/ log/ run/   slurmctld state, slurmd spool, daemon logs, pid files
#   bin/srun     a wrapper that sets SLURM_CONF and runs the real srun. It is needed because
#                inside every job the slurm-jobstep plugin (0.6.1) removes all SLURM_* variables,
#                SLURM_CONF included, before its nested srun, which would then read the
#                system's /etc/slurm/slurm.conf and fail ("job N has expired"). Jobs find the
#                wrapper through PATH, which sbatch passes into the job (--export=ALL).
# Re-running is safe: with the daemons up it only checks the cluster's health; otherwise it
# writes a new slurm.conf (new free ports) and starts what is down. Installs Debian's
# slurm-wlm and munge if they are missing.
set -euo pipefail
DIR=$(realpath -m "${1:-${SLURM_LOCAL_DIR:-/tmp/wsiproc-slurm-$(id -u)}}")
PART=${SLURM_LOCAL_PARTITION:-main}
CLUSTER=wsiproctest
CONF=$DIR/slurm.conf
M=$DIR/munge
trap 'echo "slurm-local: FAILED at line $LINENO" >&2; tail -n 15 "$DIR"/log/*.log "$M/munged.log" >&2 2>/dev/null' ERR
H=$(hostname -s)
NCPU=$(nproc)
MEM_MB=$(( $(awk '/^MemTotal:/{print int($2/1024)}' /proc/meminfo) * 9 / 10 ))

# 1. install (Debian 12 ships Slurm 22.05.8, munge 0.5.15)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurm-wlm slurm-client munge >/dev/null
fi
install -d -m 0700 "$DIR" "$M"
install -d -m 0755 "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run" "$DIR/bin"
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop() {  # stop the daemon of one pid file and wait until it is gone
  if running "$1"; then
    local p; p=$(cat "$1"); kill "$p"
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  fi
}

# 2. munge: a private daemon on its own socket, with its own key (created once)
[ -s "$M/munge.key" ] || mungekey --create --keyfile="$M/munge.key"
chmod 0600 "$M/munge.key"
munge_ok() { munge -S "$M/munge.socket" -n 2>/dev/null | unmunge -S "$M/munge.socket" >/dev/null 2>&1; }
if ! munge_ok; then
  stop "$M/munged.pid"
  munged --force --socket="$M/munge.socket" --key-file="$M/munge.key" \
    --pid-file="$M/munged.pid" --log-file="$M/munged.log" --seed-file="$M/munged.seed"
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
  munge_ok
fi

# 3. the client environment: SLURM_CONF, and bin/srun (see the header) ahead of the real one
REAL_SRUN=$(type -aP srun | grep -v "^$DIR/bin/" | head -n 1)
cat > "$DIR/bin/srun" <<EOF
#!/bin/sh
# slurm_local_up.sh: srun for the private cluster in $DIR, whatever SLURM_CONF was left.
SLURM_CONF=$CONF exec $REAL_SRUN "\$@"
EOF
chmod 0755 "$DIR/bin/srun"
cat > "$DIR/env.sh" <<EOF
# Source this file to use the private SLURM test cluster in $DIR.
export SLURM_CONF=$CONF
case ":\$PATH:" in *":$DIR/bin:"*) ;; *) export PATH="$DIR/bin:\$PATH" ;; esac
EOF
export SLURM_CONF=$CONF
export PATH="$DIR/bin:$PATH"

# 4. slurm.conf with free ports, written only when the daemons are not both up
free_port() {  # a port in 20000-29999 that no local TCP socket uses, other than $1
  local used p
  used=$(awk 'NR > 1 { split($2, a, ":"); print a[2] }' /proc/net/tcp /proc/net/tcp6 2>/dev/null)
  while :; do
    p=$(( 20000 + RANDOM % 10000 ))
    [ "$p" != "${1:-}" ] && ! grep -qx "$(printf '%04X' "$p")" <<< "$used" && { echo "$p"; return; }
  done
}
if ! { [ -s "$CONF" ] && running "$DIR/run/slurmctld.pid" && running "$DIR/run/slurmd.pid"; }; then
  stop "$DIR/run/slurmd.pid"
  stop "$DIR/run/slurmctld.pid"
  CTLD_PORT=$(free_port)
  SLURMD_PORT=$(free_port "$CTLD_PORT")
  cat > "$CONF" <<EOF
# Written by scripts/slurm_local_up.sh: a private one-node test cluster in $DIR.
ClusterName=${CLUSTER}
SlurmctldHost=${H}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=$(id -un)
AuthType=auth/munge
AuthInfo=socket=${M}/munge.socket
CredType=cred/munge
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool
SlurmctldPidFile=${DIR}/run/slurmctld.pid
SlurmdPidFile=${DIR}/run/slurmd.pid
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd.log
PlugStackConfig=${DIR}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without this a job that gives no --mem takes the whole node's memory
DefMemPerCPU=$(( MEM_MB / NCPU ))
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# keep finished jobs visible to squeue for 5 min (the plugin polls with squeue)
MinJobAge=300
NodeName=${H} NodeAddr=127.0.0.1 CPUs=${NCPU} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=${PART} Nodes=${H} Default=YES MaxTime=INFINITE State=UP
EOF
  : > "$DIR/plugstack.conf"  # no SPANK plugins (not the system's plugstack.conf)
  # 5. daemons (they daemonize themselves; pid files in DIR/run)
  slurmctld -f "$CONF"
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
  slurmd -f "$CONF"
fi
for _ in $(seq 100); do
  st=$(sinfo -h -N -n "$H" -o %T 2>/dev/null || true)
  case "$st" in idle*|mix*|alloc*) break ;; down*|drain*) scontrol update NodeName="$H" State=RESUME || true ;; esac
  sleep 0.2
done

# 6. health check: a step, a batch job, and a step inside a batch job whose SLURM_CONF is
#    removed as the slurm-jobstep plugin removes it
sinfo
srun -t 1 hostname >/dev/null
sbatch --wait -t 1 -o /dev/null --wrap 'env -u SLURM_CONF srun -n1 true' >/dev/null
echo "slurm-local: OK (dir=${DIR}, cluster=${CLUSTER}, partition=${PART}, node=${H}," \
     "cpus=${NCPU}, mem=${MEM_MB}MB, ports=$(scontrol show config | awk '/^Slurm(ctld|d)Port /{printf "%s%s", s, $3; s="/"}'))"
