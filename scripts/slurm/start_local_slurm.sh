#!/usr/bin/env bash
# Start a single-node SLURM on this machine (for tests and trying the slurm profile locally).
#
#   sudo scripts/slurm/start_local_slurm.sh     # root needed: installs packages, runs daemons
#   sudo scripts/slurm/stop_local_slurm.sh      # stops exactly the daemons started here
#
# Installs slurm-wlm and munge from the Debian registry if missing, writes
# /etc/slurm/slurm.conf (and gres.conf with FAKE_GPUS fake GPUs, for scheduling only),
# starts munged (as user munge), slurmctld and slurmd (as root), records their pids in
# $SLURM_PIDFILE and waits until `sinfo` shows the node idle.
#
# Environment:
#   SLURM_PIDFILE   where "name pid" lines go (default /run/diffsci-slurm/pids)
#   FAKE_GPUS       number of fake GPUs (gres gpu:fake:N) on the node; 0 = none (default 2)
#   SLURM_WAIT_S    seconds to wait for the node to become idle (default 90)
#
# Exit status: 0 running (started now, or already running from the same pid file),
#              3 cannot install or run SLURM here (not root, apt failed, unsupported system),
#              1 the daemons did not come up (their logs are printed).
set -euo pipefail

PIDFILE=${SLURM_PIDFILE:-/run/diffsci-slurm/pids}
FAKE_GPUS=${FAKE_GPUS:-2}
WAIT_S=${SLURM_WAIT_S:-90}
STATE=/var/lib/diffsci-slurm
LOGDIR=/var/log/diffsci-slurm
CONF=/etc/slurm/slurm.conf
MARK="# written by diffsci scripts/slurm/start_local_slurm.sh"

cannot() { echo "start_local_slurm: cannot run SLURM here: $*" >&2; exit 3; }
fail() { echo "start_local_slurm: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || cannot "needs root (installs slurm-wlm/munge, starts daemons); run with sudo"

# Already running from this pid file? Then there is nothing to do.
if [ -s "$PIDFILE" ]; then
    alive=1
    while read -r name pid; do
        kill -0 "$pid" 2>/dev/null || alive=0
    done <"$PIDFILE"
    if [ "$alive" -eq 1 ] && sinfo -h >/dev/null 2>&1; then
        echo "start_local_slurm: already running (pids in $PIDFILE)"
        exit 0
    fi
    fail "stale pid file $PIDFILE (some daemons are gone): run stop_local_slurm.sh first"
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || cannot "slurm-wlm/munge missing and no apt-get to install them"
    echo "start_local_slurm: installing slurm-wlm and munge (apt-get)..."
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq slurm-wlm munge; } >/tmp/diffsci-slurm-apt.log 2>&1 \
        || { tail -20 /tmp/diffsci-slurm-apt.log >&2; cannot "apt-get install slurm-wlm munge failed (log: /tmp/diffsci-slurm-apt.log)"; }
fi
command -v runuser >/dev/null || cannot "runuser not found (util-linux)"
id munge >/dev/null 2>&1 || cannot "user 'munge' missing (is the munge package installed?)"

# Refuse to start a second set of daemons next to ones this script does not own.
for d in slurmctld slurmd munged; do
    if pgrep -x "$d" >/dev/null; then
        cannot "a $d is already running that is not recorded in $PIDFILE; stop it first"
    fi
done

HOST=$(hostname -s)
# The node line as slurmd itself sees this machine (CPUs, sockets, cores, memory).
NODE=$(slurmd -C | head -1)
case "$NODE" in NodeName=*) ;; *) fail "unexpected 'slurmd -C' output: $NODE" ;; esac
NODE="NodeName=$HOST ${NODE#NodeName=* }"

mkdir -p "$STATE/ctld" "$STATE/d" "$LOGDIR" /etc/slurm "$(dirname "$PIDFILE")" /run/munge
chown munge:munge /run/munge
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --force; else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi

if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    cp "$CONF" "$CONF.bak.$(date +%s)"
    echo "start_local_slurm: existing $CONF backed up"
fi

GRES_LINE=""
GRES_NODE=""
if [ "$FAKE_GPUS" -gt 0 ]; then
    GRES_LINE="GresTypes=gpu"
    GRES_NODE="Gres=gpu:fake:$FAKE_GPUS"
    : >/etc/slurm/gres.conf
    for i in $(seq 0 $((FAKE_GPUS - 1))); do
        touch "$STATE/fakegpu$i"
        echo "NodeName=$HOST Name=gpu Type=fake File=$STATE/fakegpu$i" >>/etc/slurm/gres.conf
    done
else
    rm -f /etc/slurm/gres.conf
fi

cat >"$CONF" <<EOF
$MARK
ClusterName=diffsci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
$GRES_LINE
$NODE $GRES_NODE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

show_logs() {
    for f in "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" /var/log/munge/munged.log; do
        [ -f "$f" ] && { echo "--- $f" >&2; tail -15 "$f" >&2; }
    done
}
wait_pidfile() { # file seconds
    for _ in $(seq 1 $(($2 * 10))); do [ -s "$1" ] && return 0; sleep 0.1; done
    return 1
}

: >"$PIDFILE"
rm -f /run/munge/munged.pid "$STATE/slurmctld.pid" "$STATE/slurmd.pid"
runuser -u munge -- munged
wait_pidfile /run/munge/munged.pid 10 || { show_logs; fail "munged did not start"; }
echo "munged $(cat /run/munge/munged.pid)" >>"$PIDFILE"
# -c: start clean (no jobs/nodes state from an earlier run of this script).
slurmctld -c
wait_pidfile "$STATE/slurmctld.pid" 20 || { show_logs; fail "slurmctld did not start"; }
echo "slurmctld $(cat "$STATE/slurmctld.pid")" >>"$PIDFILE"
slurmd
wait_pidfile "$STATE/slurmd.pid" 20 || { show_logs; fail "slurmd did not start"; }
echo "slurmd $(cat "$STATE/slurmd.pid")" >>"$PIDFILE"

for _ in $(seq 1 "$WAIT_S"); do
    state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null | head -1 || true)
    case "$state" in
        idle) echo "start_local_slurm: node $HOST idle (pids in $PIDFILE)"; exit 0 ;;
        down* | drain* | drng* | inval* | fail*)
            scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
show_logs
sinfo -N -l >&2 || true
fail "node $HOST not idle after ${WAIT_S}s (state '${state:-?}'); daemons left running, stop with stop_local_slurm.sh"
