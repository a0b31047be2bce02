#!/usr/bin/env bash
# Stop the dev cluster started by up.sh: cancel jobs, stop every slurmd, slurmctld and munged.
set -uo pipefail
if command -v scancel >/dev/null && pgrep -x slurmctld >/dev/null; then
  scancel --user=root >/dev/null 2>&1 || true
  sleep 1
fi
for daemon in slurmd slurmctld munged; do
  pkill -x "$daemon" 2>/dev/null && echo "[dev-cluster] stopped $daemon"
done
exit 0
