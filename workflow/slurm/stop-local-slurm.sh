#!/usr/bin/env bash
# Stop the single-node cluster started by start-local-slurm.sh (its slurmd and slurmctld; munged is left
# running, since other programs on the machine may use it).
#
#   workflow/slurm/stop-local-slurm.sh [STATE_DIR]       # default /tmp/realuid-slurm
set -euo pipefail

STATE_DIR="${1:-/tmp/realuid-slurm}"

stop_daemon() {  # $1: pid file
    local pid
    [ -s "$1" ] || return 0
    pid="$(cat "$1")"
    kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid"
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "stop-local-slurm: process $pid ($1) did not stop within 5 s" >&2
    return 1
}

stop_daemon "$STATE_DIR/slurmd.pid"
stop_daemon "$STATE_DIR/slurmctld.pid"
