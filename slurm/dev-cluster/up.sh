#!/usr/bin/env bash
# Start a real SLURM cluster of N nodes (default 2) on this one machine, for the tests and for
# trying the launchers on a workstation. Run as root. Idempotent: running it again changes
# nothing when the cluster is up, and brings it back when a daemon died.
#
#   bash slurm/dev-cluster/up.sh              # 2 nodes: node1, node2
#   bash slurm/dev-cluster/up.sh --nodes 1    # the single-node cluster
#   bash slurm/dev-cluster/up.sh --clean      # and start with an empty queue (CI)
#   bash slurm/dev-cluster/down.sh
#
# How: the Slurm FAQ's "multiple slurmd" setup. Every NodeName shares this host
# (NodeHostname) and gets its own slurmd port; each daemon runs as `slurmd -N nodeK`, with
# %n in its log, pid and spool paths. The node names resolve to 127.0.0.1 through
# /etc/hosts, so MASTER_ADDR=node1 works like a real head node's name. The machine's CPUs
# and memory are split between the nodes (2 CPUs, 2 nodes: 1 CPU each), so a job that asks
# for more than a node has stays pending, as on a real cluster.
#
# A TaskProlog gives every job its own scratch folder per node (TMPDIR=/tmp/brainmri-dev/
# <node>/job<id>), as clusters' per-job TMPDIR does; the Epilog removes it at the job's end.
# Limits: one kernel, one filesystem and one network stack for all nodes, no cgroups
# (proctrack/linuxproc, task/none), no accounting (sacct says it is disabled).
set -euo pipefail

log() { echo "[dev-cluster] $*"; }
die() { echo "[dev-cluster] error: $*" >&2; exit 2; }

NODES=2
CLEAN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=${2:-}; shift 2 || die "--nodes needs a number" ;;
    --nodes=*) NODES=${1#--nodes=}; shift ;;
    --clean) CLEAN=1; shift ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (expected --nodes N or --clean)" ;;
  esac
done
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a whole number >= 1, got '$NODES'"
[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"

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

# The machine, split between the nodes.
HOST=$(hostname -s)
DETECTED=$(slurmd -C | head -n 1)
CPUS=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$DETECTED")
MEM=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$DETECTED")
[ "$NODES" -le "$CPUS" ] || die "--nodes $NODES: this machine has $CPUS CPUs, at most one node per CPU"
NODE_CPUS=$((CPUS / NODES))
NODE_MEM=$((MEM / NODES))
NAMES=$(seq -f 'node%g' 1 "$NODES" | paste -sd' ')

# Node names resolve to this machine (one marked line, rewritten when the set changes).
HOSTS_LINE="127.0.0.1 ${NAMES} # brainmri dev-cluster"
if ! grep -qxF "$HOSTS_LINE" /etc/hosts; then
  # /etc/hosts may be a bind mount (containers): rewrite it in place, never replace the file.
  KEPT=$(grep -v '# brainmri dev-cluster$' /etc/hosts || true)
  printf '%s\n%s\n' "$KEPT" "$HOSTS_LINE" >/etc/hosts
fi

# Per-job scratch on each node, and its removal.
mkdir -p /etc/slurm /var/spool/slurmctld /var/log/slurm /tmp/brainmri-dev
cat >/etc/slurm/brainmri-task-prolog.sh <<'PROLOG'
#!/bin/sh
# Written by brainmri slurm/dev-cluster/up.sh: node-local scratch for this job.
dir="/tmp/brainmri-dev/${SLURMD_NODENAME}/job${SLURM_JOB_ID}"
mkdir -p "$dir"
echo "export TMPDIR=$dir"
PROLOG
cat >/etc/slurm/brainmri-epilog.sh <<'EPILOG'
#!/bin/sh
# Written by brainmri slurm/dev-cluster/up.sh: remove this job's scratch on this node.
rm -rf "/tmp/brainmri-dev/${SLURMD_NODENAME}/job${SLURM_JOB_ID}"
exit 0
EPILOG
chmod 0755 /etc/slurm/brainmri-task-prolog.sh /etc/slurm/brainmri-epilog.sh

CONF=/etc/slurm/slurm.conf
NEW_CONF=$(cat <<CONF
# Written by brainmri slurm/dev-cluster/up.sh: ${NODES} node(s) on host ${HOST}
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
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
TaskProlog=/etc/slurm/brainmri-task-prolog.sh
Epilog=/etc/slurm/brainmri-epilog.sh
MinJobAge=600
# Small on purpose, as real clusters cap arrays too (SLURM's default is 1001): a sweep of more
# trials goes out as several arrays, and the SLURM tests exercise that.
MaxArraySize=4
KillWait=10
InactiveLimit=0
NodeName=node[1-${NODES}] NodeHostname=${HOST} NodeAddr=127.0.0.1 Port=[17001-$((17000 + NODES))] CPUs=${NODE_CPUS} RealMemory=${NODE_MEM} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
)
CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
  printf '%s\n' "$NEW_CONF" >"$CONF"
  CHANGED=1
fi

if [ "$CHANGED" = 1 ] && pgrep -x slurmd >/dev/null; then
  # Node names or ports changed: the old daemons belong to another layout.
  log "layout changed: restarting the daemons"
  scancel --user=root >/dev/null 2>&1 || true
  pkill -x slurmd || true
  pkill -x slurmctld || true
  for _ in $(seq 50); do pgrep -x 'slurmd|slurmctld' >/dev/null || break; sleep 0.2; done
fi
if ! pgrep -x slurmctld >/dev/null; then
  if [ "$CLEAN" = 1 ]; then
    # -c: forget the jobs saved in StateSaveLocation. A machine image taken while jobs ran
    # would otherwise bring them back as RUNNING on nodes that never ran them.
    log "starting slurmctld (clean state)"
    slurmctld -c
  else
    log "starting slurmctld"
    slurmctld
  fi
fi
for name in $NAMES; do
  mkdir -p "/var/spool/slurmd/$name"
  if ! pgrep -f "^slurmd -N $name\$" >/dev/null; then
    log "starting slurmd -N $name"
    slurmd -N "$name"
  fi
done

for _ in $(seq 120); do
  states=$(sinfo -h -N -o '%N %t' 2>/dev/null || true)
  ready=0
  while read -r name state; do
    case "$state" in
      idle | mix | alloc) ready=$((ready + 1)) ;;
      down* | drain* | drng*) scontrol update NodeName="$name" State=RESUME >/dev/null 2>&1 || true ;;
    esac
  done <<<"$states"
  if [ "$ready" -ge "$NODES" ]; then
    if [ "$CLEAN" = 1 ] && [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
      log "--clean: cancelling every job in the queue"
      squeue -h -o %i | xargs -r scancel >/dev/null 2>&1 || true
      for _ in $(seq 120); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] || die "--clean: jobs still in the queue after 60 s: $(squeue -h -o '%i %T' | paste -sd,)"
    fi
    log "$NODES node(s) ready: $NAMES (${NODE_CPUS} CPU(s), ${NODE_MEM} MB each)"
    sinfo -N -o '%N %t %c %m'
    exit 0
  fi
  sleep 0.5
done
echo "[dev-cluster] error: the nodes did not become idle; see /var/log/slurm/slurmctld.log and slurmd-<node>.log" >&2
sinfo -N >&2 || true
exit 1
