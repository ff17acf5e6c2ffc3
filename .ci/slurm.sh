#!/usr/bin/env bash
# A throw-away single-node SLURM cluster for CI (and for trying the SLURM launcher on a laptop).
#
#   .ci/slurm.sh start    install (if missing) and start munged, slurmctld, slurmd; wait until idle
#   .ci/slurm.sh status   print the daemons' state and `sinfo`; exit 1 if the cluster is not up
#   .ci/slurm.sh stop     kill exactly the daemons `start` launched (by their recorded PIDs)
#
# Everything lives in one folder, $LOPT_SLURM_DIR (default /tmp/lopt-slurm):
#   slurm.conf            the cluster's configuration
#   env                   `source` it: exports SLURM_CONF (clients and the launching Python need it)
#   pids/<daemon>.pid     the PIDs this script started (stop kills only these)
#   log/                  slurmctld.log, slurmd.log, <daemon>.out (their stdout/stderr)
#   state/ spool/         slurmctld's state and slurmd's spool
#
# Needs root (installs packages, runs the daemons as root, munged as the munge user).
# The configuration avoids cgroups (proctrack/linuxproc, task/none), so it works in containers.
set -euo pipefail

STATE_DIR="${LOPT_SLURM_DIR:-/tmp/lopt-slurm}"
CONF="$STATE_DIR/slurm.conf"
ENV_FILE="$STATE_DIR/env"
PID_DIR="$STATE_DIR/pids"
LOG_DIR="$STATE_DIR/log"
START_TIMEOUT_S="${LOPT_SLURM_START_TIMEOUT_S:-60}"   # bound on every wait below
PACKAGES=(slurmctld slurmd slurm-client munge)
MUNGE_KEY=/etc/munge/munge.key
MUNGE_SOCKET=/run/munge/munge.socket.2

log() { printf '[slurm.sh] %s\n' "$*" >&2; }
die() { printf '[slurm.sh] ERROR: %s\n' "$*" >&2; exit 1; }

# The last lines of every log we know of: the first thing anyone needs when startup fails.
dump_logs() {
    local f
    for f in "$LOG_DIR"/*.log "$LOG_DIR"/*.out /var/log/munge/munged.log; do
        [[ -s "$f" ]] || continue
        printf -- '----- tail -n 25 %s -----\n' "$f" >&2
        tail -n 25 "$f" >&2 || true
    done
}

fail_start() { log "$1"; dump_logs; die "cluster did not start (state in $STATE_DIR); run '$0 stop' to clean up"; }

# True when PID is alive and runs the program NAME (guards against recycled PIDs).
pid_is() {
    local pid="$1" name="$2"
    [[ -n "$pid" && -r "/proc/$pid/comm" ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]
}

recorded_pid() { [[ -f "$PID_DIR/$1.pid" ]] && cat "$PID_DIR/$1.pid" || true; }

# wait_for SECONDS DAEMON DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds;
# fail when time runs out or as soon as DAEMON (the one we just started) has exited.
wait_for() {
    local seconds="$1" daemon="$2" what="$3"; shift 3
    local deadline=$((SECONDS + seconds)) pid
    pid="$(recorded_pid "$daemon")"
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        # alive, not pid_is: right after the launch the PID may still run setsid/setpriv, which
        # exec the daemon (no PID recycling to guard against within this wait)
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            log "$daemon (pid $pid) exited"
            return 1
        fi
        sleep 0.2
    done
    log "$what (after $((SECONDS - deadline + seconds)) s)"
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]} (apt-get, --no-install-recommends)"
    # The package lists may be absent on a fresh machine; update once, then install.
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$LOG_DIR/apt.out" 2>&1 || { tail -n 20 "$LOG_DIR/apt.out" >&2; die "apt-get update failed"; }
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$LOG_DIR/apt.out" 2>&1 \
        || { tail -n 20 "$LOG_DIR/apt.out" >&2; die "apt-get install ${missing[*]} failed"; }
}

write_conf() {
    local host cpus mem_mb
    host="$(hostname -s)"
    cpus="$(nproc --all)"
    # Declare most of the RAM: without RealMemory a job asking --mem (submitit's mem_gb) is rejected.
    mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    cat >"$CONF" <<EOF
# Written by .ci/slurm.sh: a single-node cluster for tests. Not for production.
ClusterName=lopt-ci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none

# No cgroups: these work in an unprivileged container / VM without systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: sacct does not work (submitit falls back to polling its result files).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none

SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2

# Requeue: batch jobs may be requeued (scontrol requeue, preemption, submitit after a timeout).
JobRequeue=1
# Preemption: a job in the high-priority 'urgent' partition preempts jobs in 'debug' by requeueing
# them (checked: `sbatch -p urgent -c 2 ...` requeues a running 2-CPU debug job, which restarts
# with SLURM_RESTART_COUNT=1). The victim gets SIGCONT+SIGTERM, then SIGKILL after KillWait.
# preempt_send_user_signal (below) asks Slurm to also send the job's --signal (submitit's USR2);
# with 22.05 and this config only SIGTERM was seen, so jobs must treat SIGTERM as "stop now".
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
# Seconds between SIGTERM and SIGKILL when a job is requeued/cancelled: enough to write a checkpoint.
KillWait=20
# Short scheduler intervals so tests are not waiting on the scheduler.
# (Slurm 22.05 spells the preemption option here; newer releases also accept PreemptParameters.)
SchedulerParameters=batch_sched_delay=1,sched_min_interval=100000,preempt_send_user_signal
MessageTimeout=20
SlurmdTimeout=120
InactiveLimit=0
MinJobAge=300

SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=7-00:00:00 State=UP PriorityTier=1
PartitionName=urgent Nodes=ALL Default=NO MaxTime=7-00:00:00 State=UP PriorityTier=10
EOF
}

start_munge() {
    # Reuse a munged that already answers (e.g. a system service); we then neither record nor stop it.
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged already running (not started by this script)"
        return 0
    fi
    if [[ ! -s "$MUNGE_KEY" ]]; then
        log "creating the munge key $MUNGE_KEY"
        mkdir -p "$(dirname "$MUNGE_KEY")"
        mungekey --create --keyfile="$MUNGE_KEY"
    fi
    # munged refuses keys and directories that others can read or write.
    chown munge:munge "$MUNGE_KEY" "$(dirname "$MUNGE_KEY")"
    chmod 0600 "$MUNGE_KEY"
    chmod 0700 "$(dirname "$MUNGE_KEY")"
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge
    install -d -o munge -g munge -m 0711 /var/lib/munge
    # setpriv execs munged (no intermediate process), so $! is munged's own PID.
    setsid setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground \
        </dev/null >"$LOG_DIR/munged.out" 2>&1 &
    echo $! >"$PID_DIR/munged.pid"
    wait_for "$START_TIMEOUT_S" munged "munged answers" bash -c 'munge -n | unmunge' \
        || fail_start "munged did not answer on $MUNGE_SOCKET within ${START_TIMEOUT_S} s"
}

# start_daemon NAME ARGS...: run a slurm daemon in the foreground (-D) as a detached session leader.
start_daemon() {
    local name="$1"; shift
    setsid "/usr/sbin/$name" -D -f "$CONF" "$@" </dev/null >"$LOG_DIR/$name.out" 2>&1 &
    echo $! >"$PID_DIR/$name.pid"
}

node_idle() { sinfo -h -N -o '%T' 2>/dev/null | grep -qx 'idle'; }

cmd_start() {
    if cmd_status >/dev/null 2>&1; then
        log "already running; env file: $ENV_FILE"
        return 0
    fi
    [[ "$(id -u)" == 0 ]] || die "must run as root (installs packages, starts daemons)"
    local t0
    t0=$(date +%s%N)
    # A previous, half-started cluster may hold the ports: stop what we recorded, then start clean.
    cmd_stop >/dev/null 2>&1 || true
    rm -rf "$STATE_DIR"
    mkdir -p "$STATE_DIR/state" "$STATE_DIR/spool" "$PID_DIR" "$LOG_DIR"
    install_packages
    write_conf
    printf 'export SLURM_CONF=%q\n' "$CONF" >"$ENV_FILE"
    export SLURM_CONF="$CONF"

    start_munge
    start_daemon slurmctld -i   # -i: ignore any saved state (fresh cluster every time)
    wait_for "$START_TIMEOUT_S" slurmctld "slurmctld answers" scontrol ping \
        || fail_start "slurmctld did not answer 'scontrol ping' within ${START_TIMEOUT_S} s"
    start_daemon slurmd
    wait_for "$START_TIMEOUT_S" slurmd "node $(hostname -s) is idle" node_idle \
        || fail_start "node not idle within ${START_TIMEOUT_S} s; sinfo says: $(sinfo -N 2>&1 | tr '\n' ' ')"
    log "cluster up in $(( ($(date +%s%N) - t0) / 1000000 )) ms. Use it with: source $ENV_FILE"
    sinfo >&2
}

cmd_stop() {
    local name pid i
    # Reverse start order: slurmd, slurmctld, then munged (the daemons authenticate through it).
    for name in slurmd slurmctld munged; do
        pid="$(recorded_pid "$name")"
        if pid_is "$pid" "$name"; then
            kill -TERM "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do pid_is "$pid" "$name" || break; sleep 0.2; done
            if pid_is "$pid" "$name"; then
                log "$name ($pid) ignored SIGTERM for 10 s; sending SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            log "stopped $name ($pid)"
        fi
        rm -f "$PID_DIR/$name.pid"
    done
}

cmd_status() {
    local name pid up=0
    for name in munged slurmctld slurmd; do
        pid="$(recorded_pid "$name")"
        if pid_is "$pid" "$name"; then
            echo "$name: running (pid $pid)"
        elif [[ "$name" == munged ]] && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
            echo "munged: running (not started by this script)"
        else
            echo "$name: not running"; up=1
        fi
    done
    # Don't ask a controller that is not running: sinfo would retry for many seconds.
    ((up == 0)) || return 1
    [[ -f "$ENV_FILE" ]] || { echo "no env file at $ENV_FILE"; return 1; }
    # shellcheck disable=SC1090
    source "$ENV_FILE"
    timeout 20 sinfo -N 2>&1 || return 1
    node_idle_or_busy
}

# The cluster is usable when the node accepts jobs (idle, or busy with jobs: mixed/allocated).
node_idle_or_busy() { sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)$'; }

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status   (state folder: $STATE_DIR, env file: $ENV_FILE)" >&2; exit 2 ;;
esac
