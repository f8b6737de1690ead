#!/usr/bin/env bash
# Developer utility (tests/test_slurm.py runs it): an idempotent single-node SLURM cluster on
# localhost (Debian 12, root, no systemd), to test the workflow's SLURM profile for real.
# Re-running is safe: installs only if missing, starts only daemons that are down.
# It owns /etc/slurm/slurm.conf (the plugin's job steps only find the default path), so it
# refuses to run where that file belongs to another cluster.
set -euo pipefail
if [ -s /etc/slurm/slurm.conf ] && ! grep -q '^ClusterName=local$' /etc/slurm/slurm.conf; then
  echo "slurm-local: /etc/slurm/slurm.conf belongs to another cluster; not touching it" \
       "(set WSIPROC_SKIP_SLURM=1 to skip tests/test_slurm.py here)" >&2
  exit 1
fi
PART=${SLURM_LOCAL_PARTITION:-main}
CTLD_PORT=${SLURM_LOCAL_CTLD_PORT:-6817}     # override only if the default ports are taken
SLURMD_PORT=${SLURM_LOCAL_SLURMD_PORT:-6818}
trap 'echo "slurm-local: FAILED at line $LINENO" >&2; tail -n 15 /var/log/slurm/*.log /var/log/munge/munged.log >&2 2>/dev/null' ERR
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

# 2. munge (runs as the munge user; key created once)
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
[ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# 3. slurm.conf at the DEFAULT path (the slurm-jobstep plugin strips SLURM_CONF
#    from the env of its nested srun, so a non-default path breaks jobs)
install -d -m 0755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf.new <<EOF
ClusterName=local
SlurmctldHost=${H}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
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
if cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf; then
  rm /etc/slurm/slurm.conf.new
else
  mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
  # config changed: stop our daemons (by pid file) so they restart with it
  for f in /run/slurmd.pid /run/slurmctld.pid; do
    if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
      p=$(cat "$f"); kill "$p"; while kill -0 "$p" 2>/dev/null; do sleep 0.2; done
    fi
  done
fi

# 4. daemons (they daemonize themselves; pid files in /run)
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
running /run/slurmctld.pid || slurmctld
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep 'is UP' >/dev/null && break; sleep 0.2; done
running /run/slurmd.pid || slurmd
for _ in $(seq 100); do
  st=$(sinfo -h -N -n "$H" -o %T 2>/dev/null || true)
  case "$st" in idle*|mix*|alloc*) break ;; down*|drain*) scontrol update NodeName="$H" State=RESUME || true ;; esac
  sleep 0.2
done

# 5. health check
sinfo
srun -t 1 hostname >/dev/null
sbatch --wait -t 1 -o /dev/null --wrap true >/dev/null
echo "slurm-local: OK (partition=${PART}, node=${H}, cpus=${NCPU}, mem=${MEM_MB}MB)"
