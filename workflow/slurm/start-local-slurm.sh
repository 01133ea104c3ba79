#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine: munged, slurmctld and slurmd, all local.
# Installs nothing (see install-debian.sh); run as root, because slurmd starts jobs as their owners.
#
#   workflow/slurm/start-local-slurm.sh [STATE_DIR]      # default /tmp/realuid-slurm
#
# The configuration goes to /etc/slurm/slurm.conf, where every Slurm command looks for it: the srun
# that the Snakemake plugin starts inside each job runs with the SLURM_* variables removed, so a
# SLURM_CONF elsewhere would not reach it. A slurm.conf this script did not write is never replaced.
# State, spool and logs live in STATE_DIR. Safe to run again: a cluster that already answers is left as
# it is. Stop it with stop-local-slurm.sh.
# Environment: SLURM_PARTITION (default "main"), SLURMCTLD_PORT (6817), SLURMD_PORT (6818).
# Exit status: 0 when the node is idle and accepts jobs, 3 when Slurm or munge is not installed,
# 4 when /etc/slurm/slurm.conf belongs to another cluster, 1 on any other failure (the daemon logs in STATE_DIR are printed).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="$(mkdir -p "${1:-/tmp/realuid-slurm}" && cd "${1:-/tmp/realuid-slurm}" && pwd)"
CONF=/etc/slurm/slurm.conf
MARKER="# realuid local single-node Slurm cluster"
unset SLURM_CONF
PARTITION="${SLURM_PARTITION:-main}"

fail() { echo "start-local-slurm: $*" >&2; exit 1; }

for tool in munged munge unmunge slurmctld slurmd sinfo scontrol sbatch squeue; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
        echo "start-local-slurm: $tool is not installed (run workflow/slurm/install-debian.sh)" >&2
        exit 3
    fi
done
PATH="$PATH:/usr/sbin:/sbin"
[ "$(id -u)" -eq 0 ] || fail "must run as root: slurmd starts each job as the user who submitted it"
if [ -e "$CONF" ] && [ "$(head -c ${#MARKER} "$CONF")" != "$MARKER" ]; then
    echo "start-local-slurm: $CONF exists and was not written by this script; leaving it alone" >&2
    exit 4
fi

node_is_ready() {
    local state
    state="$(sinfo --noheader --format=%T --nodes="$NODE" 2>/dev/null | head -n1)" || return 1
    case "$state" in idle | mixed | allocated | completing) return 0 ;; *) return 1 ;; esac
}

show_logs_and_fail() {
    for log in "$STATE_DIR"/slurmctld.log "$STATE_DIR"/slurmd.log /var/log/munge/munged.log; do
        [ -f "$log" ] && { echo "---- $log" >&2; tail -n 20 "$log" >&2; }
    done
    fail "$1"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0  # a munged is already running (for example the system's own)
    fi
    # The key is configuration, not a package: Debian's munge package creates one; make one if absent.
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 600 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    if id munge >/dev/null 2>&1; then
        chown munge:munge /run/munge /var/log/munge /var/lib/munge
        chmod 755 /run/munge
        runuser -u munge -- munged || show_logs_and_fail "munged did not start"
    else
        munged --force || show_logs_and_fail "munged did not start"
    fi
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    show_logs_and_fail "munged did not start"
}

write_conf() {
    # Node size as slurmd itself measures it; keep some memory back for the daemons and the submitter.
    local probe cpus mem_mb
    probe="$(slurmd -C | head -n1)"
    cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$probe")"
    mem_mb="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$probe")"
    [ -n "$cpus" ] && [ -n "$mem_mb" ] || fail "cannot read CPUs/RealMemory from 'slurmd -C': $probe"
    mem_mb=$((mem_mb * 9 / 10))
    mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/spool" "$(dirname "$CONF")"
    sed -e "s|@NODE@|$NODE|g" -e "s|@USER@|$(id -un)|g" -e "s|@STATE_DIR@|$STATE_DIR|g" \
        -e "s|@CPUS@|$cpus|g" -e "s|@MEM_MB@|$mem_mb|g" -e "s|@PARTITION@|$PARTITION|g" \
        -e "s|@CTLD_PORT@|${SLURMCTLD_PORT:-6817}|g" -e "s|@SLURMD_PORT@|${SLURMD_PORT:-6818}|g" \
        "$HERE/slurm.conf.in" >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
}

daemon_running() {  # $1: pid file
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

NODE="$(hostname -s)"
start_munge
if daemon_running "$STATE_DIR/slurmctld.pid" && daemon_running "$STATE_DIR/slurmd.pid" && node_is_ready; then
    echo "start-local-slurm: node $NODE already idle"
    exit 0
fi
write_conf
# -c: start from an empty state, so jobs of an earlier run never come back.
daemon_running "$STATE_DIR/slurmctld.pid" || slurmctld -c || show_logs_and_fail "slurmctld did not start"
daemon_running "$STATE_DIR/slurmd.pid" || slurmd || show_logs_and_fail "slurmd did not start"
for _ in $(seq 100); do
    if node_is_ready; then
        echo "start-local-slurm: node $NODE idle, partition $PARTITION ($CONF)"
        exit 0
    fi
    sleep 0.2
done
show_logs_and_fail "node $NODE did not become idle within 20 s"
