#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine, for the tests and for trying the
# launchers on a workstation. Run as root. Idempotent: running it again changes nothing
# when the cluster is up, and brings it back when a daemon died.
#
#   bash slurm/dev-cluster/up.sh      # then: sinfo, python launch/submit.py ...
#   bash slurm/dev-cluster/down.sh
#
# Debian's slurmctld/slurmd/munge with proctrack/linuxproc, task/none, select/cons_tres and
# no accounting (sacct then says accounting is disabled; submitit copes).
set -euo pipefail

log() { echo "[dev-cluster] $*"; }

if [ "$(id -u)" != 0 ]; then
  echo "[dev-cluster] error: run as root (it installs packages and starts daemons)" >&2
  exit 2
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

# munge: a key, a socket folder owned by munge, the daemon running as munge.
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! pgrep -x munged >/dev/null; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done

# slurm.conf for this host, from what slurmd detects.
CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)
NODE_LINE=$(slurmd -C | head -n 1)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
NEW_CONF=$(cat <<CONF
# Written by brainmri slurm/dev-cluster/up.sh
ClusterName=brainmri-dev
SlurmctldHost=${HOST}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MinJobAge=600
KillWait=10
InactiveLimit=0
${NODE_LINE} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
)
CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
  printf '%s\n' "$NEW_CONF" >"$CONF"
  CHANGED=1
fi

if ! pgrep -x slurmctld >/dev/null; then
  log "starting slurmctld"
  slurmctld
elif [ "$CHANGED" = 1 ]; then
  scontrol reconfigure
fi
if ! pgrep -x slurmd >/dev/null; then
  log "starting slurmd"
  slurmd
fi

for _ in $(seq 120); do
  state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null | head -n 1 || true)
  case "$state" in
    idle | mix | alloc) log "node $HOST is $state"; sinfo; exit 0 ;;
    down* | drain* | drng*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
echo "[dev-cluster] error: node $HOST did not become idle; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo >&2 || true
exit 1
