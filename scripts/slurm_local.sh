#!/usr/bin/env bash
# A one-node SLURM cluster on localhost, for the tests and for trying slurm/train.sbatch on one machine.
#
#   bash scripts/slurm_local.sh start    # install nothing; write a munge key and slurm.conf, start munged,
#                                        # slurmctld and slurmd (as root), wait until the node is idle; a cluster
#                                        # that is already up is left as it is (its jobs keep running)
#   bash scripts/slurm_local.sh restart  # stop, then start afresh (clears the job queue)
#   bash scripts/slurm_local.sh status   # sinfo
#   bash scripts/slurm_local.sh stop     # stop the three daemons
#
# Needs Debian's slurmctld, slurmd, slurm-client and munge (scripts/setup.sh installs them when run as root with
# WITH_SLURM=1, and .ci/run does). The node offers SLURM_LOCAL_CPUS CPUs (default 8, more than the machine has,
# so that a 2-task job and a sweep's jobs can run side by side on a 2-core machine: config_overrides lets slurmd
# accept it). State lives under SLURM_LOCAL_DIR (default /tmp/trainer-slurm); the config is /etc/slurm/slurm.conf,
# where sbatch, srun and submitit look for it.
set -euo pipefail
action="${1:-start}"
state="${SLURM_LOCAL_DIR:-/tmp/trainer-slurm}"
cpus="${SLURM_LOCAL_CPUS:-8}"
conf=/etc/slurm/slurm.conf
node="$(hostname -s)"

need() {
    for b in munged slurmctld slurmd sbatch sinfo; do
        command -v "$b" >/dev/null || { echo "error: '$b' not found: apt-get install slurmctld slurmd slurm-client munge" >&2; exit 1; }
    done
    [ "$(id -u)" = 0 ] || { echo "error: the local SLURM cluster is started as root" >&2; exit 1; }
}

stop() {
    for d in slurmd slurmctld; do pkill -x "$d" 2>/dev/null || true; done
    for _ in $(seq 50); do pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break; sleep 0.1; done
    pkill -x munged 2>/dev/null || true
}

up() {
    pgrep -x slurmctld >/dev/null && pgrep -x slurmd >/dev/null && sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

start() {
    need
    if up; then
        echo "SLURM on localhost: already up (node $node; config $conf)"
        return 0
    fi
    mkdir -p "$state"/{spool,ctld,log} /etc/slurm /etc/munge /var/run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /etc/munge /var/run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
    cat >"$conf" <<EOF
# Written by scripts/slurm_local.sh: one node on localhost.
ClusterName=trainer-local
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# requeued jobs may start again at once (the default holds them for a while)
SchedulerParameters=defer
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    stop
    if command -v runuser >/dev/null && id munge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged --force
    else
        /usr/sbin/munged --force
    fi
    slurmctld -c
    slurmd -c
    for _ in $(seq 150); do
        if sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "SLURM on localhost: node $node, $cpus CPUs, partition debug (config $conf)"
            return 0
        fi
        sleep 0.2
    done
    echo "error: the local SLURM node did not come up; see $state/log/" >&2
    sinfo -N >&2 || true
    exit 1
}

case "$action" in
    start) start ;;
    restart) stop; start ;;
    stop) stop ;;
    status) sinfo -N ;;
    *) echo "usage: $0 start|restart|stop|status" >&2; exit 2 ;;
esac
