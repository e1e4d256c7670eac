#!/usr/bin/env bash
# Stop the daemons that tests/slurm/up.sh started (slurmd, slurmctld, munged),
# by the PIDs recorded in $STATE_DIR. Nothing else is touched: packages, config
# and /var/spool/slurm-snakemaps stay, so the next up.sh is quick. Idempotent.
set -euo pipefail

STATE_DIR=${SNAKEMAPS_SLURM_STATE_DIR:-/run/snakemaps-slurm}
say() { echo "[slurm down] $*"; }

stop() {
    local name=$1 pidf=$STATE_DIR/$1.pid pid
    if [[ ! -r $pidf ]]; then
        say "$name: no pid file, nothing to stop"
        return 0
    fi
    pid=$(tr -dc '0-9' <"$pidf")
    if [[ -z $pid || ! -r /proc/$pid/comm || $(cat "/proc/$pid/comm" 2>/dev/null) != "$name" ]]; then
        say "$name: pid ${pid:-?} is not running (stale pid file removed)"
        rm -f "$pidf"
        return 0
    fi
    say "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) still running after 15 s; sending SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidf"
}

stop slurmd
stop slurmctld
stop munged
say "done"
