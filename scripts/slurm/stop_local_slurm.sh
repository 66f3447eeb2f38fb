#!/usr/bin/env bash
# Stop the daemons started by start_local_slurm.sh: exactly the pids recorded in its pid file
# (each checked to still be the daemon it was), nothing else.
#
#   SLURM_PIDFILE   the pid file (default /run/diffsci-slurm/pids)
set -uo pipefail

PIDFILE=${SLURM_PIDFILE:-/run/diffsci-slurm/pids}
[ -f "$PIDFILE" ] || { echo "stop_local_slurm: no pid file $PIDFILE: nothing to stop"; exit 0; }

# Reverse order: slurmd, slurmctld, then munged (the others need it while shutting down).
mapfile -t lines < <(tac "$PIDFILE")
for line in "${lines[@]}"; do
    read -r name pid <<<"$line"
    [ -n "${pid:-}" ] || continue
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    if [ "$comm" != "$name" ]; then
        echo "stop_local_slurm: $name (pid $pid) already gone"
        continue
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$name" ] || break
        sleep 0.1
    done
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$name" ]; then
        echo "stop_local_slurm: $name (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "stop_local_slurm: stopped $name (pid $pid)"
done
rm -f "$PIDFILE"
