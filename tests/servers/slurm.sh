#!/usr/bin/env bash
# Real one-node Slurm cluster on 127.0.0.1 for pipe's Slurm executor tests.
#
#   tests/servers/slurm.sh start STATE_DIR   install if missing, start munged,
#                                            slurmctld, slurmd; wait for `idle`
#   tests/servers/slurm.sh env   STATE_DIR   print `export ...` lines for clients
#   tests/servers/slurm.sh check STATE_DIR   prove sbatch/squeue/scontrol/scancel
#                                            (PIPE_TEST_SLURM_CHECK_TIMEOUT=1 adds
#                                            the ~1-2 min TIMEOUT test)
#   tests/servers/slurm.sh stop  STATE_DIR   cancel its jobs, stop what `start`
#                                            started (by recorded pids)
#
# Debian 12 packages: slurmctld slurmd slurm-client munge (Slurm 22.05).
# A private munged (own key and socket) and private ports: nothing in /etc is
# used or changed, and a system Slurm/munge, if any, is left alone.
# See tests/servers/README.md.
set -euo pipefail

PROG="slurm.sh"
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
    echo "usage: $0 start|stop|env|check STATE_DIR" >&2
    exit 2
}

[ $# -eq 2 ] || usage
CMD=$1
mkdir -p "$2"
STATE=$(cd "$2" && pwd -P)

START_TIMEOUT=${PIPE_TEST_SLURM_START_TIMEOUT:-60}
MIN_JOB_AGE=${PIPE_TEST_SLURM_MIN_JOB_AGE:-30}
PARTITION=debug
CONF=$STATE/slurm.conf
ENVFILE=$STATE/env
LOGDIR=$STATE/log

# ---------------------------------------------------------------- helpers

# True if PID is a live (non-zombie) process whose command line contains WORD.
pid_alive() {
    local pid=$1 word=$2 st
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    st=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ "$st" != Z ] && [ "$st" != X ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$word"
}

recorded_pid() { [ -f "$STATE/$1.pid" ] && cat "$STATE/$1.pid"; }

daemon_alive() { # NAME: munged|slurmctld|slurmd
    local pid
    pid=$(recorded_pid "$1") || return 1
    pid_alive "$pid" "$1"
}

stop_daemon() { # NAME
    local pid
    pid=$(recorded_pid "$1") || return 0
    if pid_alive "$pid" "$1"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do
            pid_alive "$pid" "$1" || break
            sleep 0.1
        done
        if pid_alive "$pid" "$1"; then
            log "$1 (pid $pid) ignored SIGTERM for 15s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
        log "stopped $1 (pid $pid)"
    fi
    rm -f "$STATE/$1.pid"
}

# Print N distinct free TCP ports on 127.0.0.1; preferred ones first if free.
free_ports() {
    python3 - "$@" <<'EOF'
import socket, sys
n = int(sys.argv[1]); prefer = [int(p) for p in sys.argv[2:] if p]
held, out = [], []
def grab(p):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        s.close()
        return None
    held.append(s)
    return s.getsockname()[1]
for p in prefer:
    if len(out) < n and p not in out and grab(p):
        out.append(p)
while len(out) < n:
    p = grab(0)
    if p not in out:
        out.append(p)
print(" ".join(str(p) for p in out))
EOF
}

log_tails() {
    local d f
    for d in munged slurmctld slurmd; do
        # The daemons run in the foreground: their log file, if they got as far
        # as opening it, has the same lines as their stderr.
        f=$LOGDIR/$d.log
        [ -s "$f" ] || f=$LOGDIR/$d.stderr
        [ -s "$f" ] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 20 "$f" >&2 || true
    done
    echo "-----" >&2
}

fail_start() { # MESSAGE
    log "$1"
    log_tails
    stop_all
    exit 1
}

APT_UPDATED=0
apt_install() { # PACKAGES...
    command -v apt-get >/dev/null || die "missing $*, and no apt-get to install them"
    export DEBIAN_FRONTEND=noninteractive
    if [ $APT_UPDATED -eq 0 ]; then
        apt-get update -qq >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "installing $* (apt-get)"
    local out
    if ! out=$(apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" 2>&1); then
        printf '%s\n' "$out" | tail -n 30 >&2
        die "apt-get install $* failed"
    fi
}

ensure_installed() {
    local need=() c
    for c in slurmctld slurmd; do command -v "$c" >/dev/null || need+=("$c"); done
    for c in sbatch squeue scontrol scancel sinfo; do
        command -v "$c" >/dev/null || { need+=(slurm-client); break; }
    done
    for c in munged mungekey munge; do
        command -v "$c" >/dev/null || { need+=(munge); break; }
    done
    command -v python3 >/dev/null || need+=(python3)
    [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
}

# Short directory for unix sockets (sun_path is 108 bytes).
runtime_dir() {
    if [ -f "$STATE/rundir" ] && [ -d "$(cat "$STATE/rundir")" ]; then
        cat "$STATE/rundir"; return
    fi
    local d=$STATE/run
    if [ ${#d} -gt 60 ]; then d=$(mktemp -d /tmp/pipe-slurm.XXXXXX); fi
    mkdir -p "$d"
    echo "$d" >"$STATE/rundir"
    echo "$d"
}

# ---------------------------------------------------------------- start

start_munged() {
    local run=$1 key=$STATE/munge/munge.key sock=$1/munge/munge.socket
    mkdir -p "$STATE/munge" "$run/munge"
    chmod 700 "$STATE/munge"
    chmod 755 "$run/munge"   # clients (sbatch as any user) must reach the socket
    if [ ! -s "$key" ]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$key" >/dev/null
        else
            dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
        fi
    fi
    chmod 600 "$key"
    rm -f "$sock" "$sock.lock"
    setsid munged --foreground --force \
        --socket="$sock" --key-file="$key" \
        --pid-file="$run/munge/munged.pid" --seed-file="$STATE/munge/munged.seed" \
        --log-file="$LOGDIR/munged.log" \
        </dev/null >>"$LOGDIR/munged.stderr" 2>&1 &
    echo $! >"$STATE/munged.pid"
    local deadline=$((SECONDS + 15))
    until [ -S "$sock" ] && munge -n -S "$sock" 2>/dev/null | unmunge -S "$sock" >/dev/null 2>&1; do
        daemon_alive munged || fail_start "munged exited"
        [ $SECONDS -lt $deadline ] || fail_start "munged did not answer on $sock within 15s"
        sleep 0.1
    done
    MUNGE_SOCKET=$sock
}

write_conf() { # RUN CTLD_PORT SLURMD_PORT
    local run=$1 node hw
    # The node line must match this machine: take it from slurmd -C.
    hw=$(slurmd -C 2>/dev/null | head -n 1) || true
    node=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$hw")
    [ -n "$node" ] || node=$(hostname -s)
    [ -n "$hw" ] || hw="NodeName=$node CPUs=$(nproc)"
    # Keep the hardware fields only (drop NodeName and UpTime).
    hw=$(tr ' ' '\n' <<<"$hw" | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=' | tr '\n' ' ')
    NODE=$node
    cat >"$CONF.tmp" <<EOF
# Written by tests/servers/slurm.sh: a one-node test cluster on 127.0.0.1.
ClusterName=pipetest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$2
SlurmdPort=$3
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE/ctld-state
SlurmdSpoolDir=$run/slurmd
SlurmctldPidFile=$run/slurmctld.pidfile
SlurmdPidFile=$run/slurmd.pidfile
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Batch jobs are started by slurmctld's background loop (a 1 s tick in 22.05);
# no extra delay on top of it.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1
# Finished jobs stay visible to squeue/scontrol for MinJobAge s (+ up to the
# purge pass interval); their final line is also in JobCompLoc.
MinJobAge=$MIN_JOB_AGE
ReturnToService=2
JobRequeue=0
KillWait=2
InactiveLimit=0
MessageTimeout=10
SlurmdTimeout=300
PropagateResourceLimits=NONE
NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$node $hw State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mv "$CONF.tmp" "$CONF"
}

node_state() {
    SLURM_CONF=$CONF sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n 1 || true
}

cmd_start() {
    if daemon_alive slurmctld && daemon_alive slurmd && daemon_alive munged && [ -f "$ENVFILE" ]; then
        log "already running (slurmctld $(recorded_pid slurmctld), slurmd $(recorded_pid slurmd)); state in $STATE"
        return 0
    fi
    stop_all # leftovers of an earlier, partial run (recorded pids only)
    ensure_installed
    local t0 run ports prev=""
    t0=$(date +%s%3N)
    mkdir -p "$LOGDIR"
    run=$(runtime_dir)
    # Fresh controller state every start: job ids restart at 1, no stale jobs.
    rm -rf "$STATE/ctld-state" "$run/slurmd"
    mkdir -p "$STATE/ctld-state" "$run/slurmd"
    [ -f "$STATE/ports" ] && prev=$(cat "$STATE/ports")
    # shellcheck disable=SC2086
    read -r -a ports <<<"$(free_ports 2 $prev)"
    echo "${ports[*]}" >"$STATE/ports"

    start_munged "$run"
    write_conf "$run" "${ports[0]}" "${ports[1]}"

    setsid slurmctld -D -f "$CONF" </dev/null >>"$LOGDIR/slurmctld.stderr" 2>&1 &
    echo $! >"$STATE/slurmctld.pid"
    local deadline=$((SECONDS + START_TIMEOUT))
    until SLURM_CONF=$CONF scontrol ping 2>/dev/null | grep -q 'is UP'; do
        daemon_alive slurmctld || fail_start "slurmctld exited"
        [ $SECONDS -lt $deadline ] || fail_start "slurmctld did not answer within ${START_TIMEOUT}s"
        sleep 0.1
    done

    setsid slurmd -D -f "$CONF" -N "$NODE" </dev/null >>"$LOGDIR/slurmd.stderr" 2>&1 &
    echo $! >"$STATE/slurmd.pid"
    local st=""
    while :; do
        st=$(node_state)
        [ "$st" = idle ] && break
        daemon_alive slurmd || fail_start "slurmd exited"
        daemon_alive slurmctld || fail_start "slurmctld exited"
        if [ $SECONDS -ge $deadline ]; then
            SLURM_CONF=$CONF sinfo -R >&2 2>/dev/null || true
            fail_start "node $NODE not idle within ${START_TIMEOUT}s (state: ${st:-unknown})"
        fi
        sleep 0.1
    done

    {
        echo "export SLURM_CONF=$CONF"
        echo "export PIPE_TEST_SLURM_PARTITION=$PARTITION"
        echo "export PIPE_TEST_SLURM_NODE=$NODE"
        echo "export PIPE_TEST_SLURM_MIN_JOB_AGE=$MIN_JOB_AGE"
        echo "export PIPE_TEST_SLURM_JOBCOMP_LOG=$LOGDIR/jobcomp.log"
        echo "export PIPE_TEST_SLURMCTLD_PID=$(recorded_pid slurmctld)"
        echo "export PIPE_TEST_SLURMD_PID=$(recorded_pid slurmd)"
        echo "export PIPE_TEST_MUNGED_PID=$(recorded_pid munged)"
    } >"$ENVFILE.tmp"
    mv "$ENVFILE.tmp" "$ENVFILE"
    log "Slurm $(slurmctld -V 2>/dev/null | awk '{print $2}') up in $(($(date +%s%3N) - t0)) ms: node $NODE idle," \
        "slurmctld 127.0.0.1:${ports[0]} (pid $(recorded_pid slurmctld)), slurmd :${ports[1]} (pid $(recorded_pid slurmd))"
}

# ---------------------------------------------------------------- stop

stop_all() {
    # Cancel this cluster's jobs first so no job processes outlive slurmd.
    if daemon_alive slurmctld && [ -f "$CONF" ]; then
        local ids
        ids=$(SLURM_CONF=$CONF squeue -h -o '%i' 2>/dev/null || true)
        if [ -n "$ids" ]; then
            # shellcheck disable=SC2086
            SLURM_CONF=$CONF scancel $ids 2>/dev/null || true
            for _ in $(seq 1 50); do
                [ -z "$(SLURM_CONF=$CONF squeue -h -o '%i' -t running,completing,suspended 2>/dev/null || true)" ] && break
                sleep 0.2
            done
        fi
    fi
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
    rm -f "$ENVFILE"
    # A /tmp runtime dir (used when STATE_DIR is too long for socket paths).
    if [ -f "$STATE/rundir" ]; then
        case $(cat "$STATE/rundir") in
            /tmp/pipe-slurm.*) rm -rf "$(cat "$STATE/rundir")" ;;
        esac
        rm -f "$STATE/rundir"
    fi
}

# ---------------------------------------------------------------- env / check

cmd_env() {
    daemon_alive slurmctld && daemon_alive slurmd && [ -f "$ENVFILE" ] \
        || die "not running (start it with: $0 start $STATE)"
    cat "$ENVFILE"
}

now_ms() { date +%s%3N; }

job_field() { # ID FIELD -> value from `scontrol show job -o`
    scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

wait_final() { # ID TIMEOUT_S -> prints final JobState
    local id=$1 deadline=$((SECONDS + $2)) st
    while :; do
        st=$(job_field "$id" JobState)
        case $st in
            COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)
                echo "$st"; return 0 ;;
        esac
        [ $SECONDS -lt $deadline ] || { echo "${st:-GONE}"; return 1; }
        sleep 0.05
    done
}

cmd_check() {
    cmd_env >/dev/null
    # shellcheck disable=SC1090
    . "$ENVFILE"
    local tmp passes=0 fails=0 id st t0 t1 lat=()
    tmp=$(mktemp -d)
    expect() { # WHAT WANT GOT
        if [ "$2" = "$3" ]; then echo "ok   $1: $3"; passes=$((passes + 1)); else echo "FAIL $1: want $2, got $3"; fails=$((fails + 1)); fi
    }

    id=$(sbatch --parsable --wrap 'echo hi; exit 3' --output="$tmp/x.log")
    expect "sbatch --parsable prints a numeric id" yes "$([[ $id =~ ^[0-9]+$ ]] && echo yes || echo "$id")"
    st=$(squeue -h -j "$id" -t all -o '%T' 2>/dev/null || true)
    expect "squeue -j shows the job right after submit" yes "$([ -n "$st" ] && echo yes || echo none)"
    expect "exit 3 job ends FAILED" FAILED "$(wait_final "$id" 30)"
    expect "scontrol show job: ExitCode" 3:0 "$(job_field "$id" ExitCode)"
    expect "squeue -t all after the end" FAILED "$(squeue -h -j "$id" -t all -o '%T' 2>/dev/null)"
    expect "--output file written" hi "$(cat "$tmp/x.log" 2>/dev/null)"

    id=$(sbatch --parsable --wrap 'true' --output=/dev/null)
    expect "true job ends COMPLETED" COMPLETED "$(wait_final "$id" 30)"
    expect "scontrol show job: ExitCode" 0:0 "$(job_field "$id" ExitCode)"

    id=$(sbatch --parsable --wrap 'sleep 120' --output=/dev/null)
    for _ in $(seq 1 60); do [ "$(job_field "$id" JobState)" = RUNNING ] && break; sleep 0.1; done
    scancel "$id"
    expect "scancel: running job ends CANCELLED" CANCELLED "$(wait_final "$id" 30)"

    # submit -> final state seen by scontrol, trivial job, 5 times in a row
    for _ in 1 2 3 4 5; do
        t0=$(now_ms)
        id=$(sbatch --parsable --wrap 'true' --output=/dev/null)
        st=$(wait_final "$id" 30)
        t1=$(now_ms)
        lat+=("$((t1 - t0))")
    done
    echo "info submit->COMPLETED latency (ms): ${lat[*]}"

    if [ "${PIPE_TEST_SLURM_CHECK_TIMEOUT:-0}" = 1 ]; then
        t0=$SECONDS
        id=$(sbatch --parsable --time=0:01 --wrap 'sleep 120' --output=/dev/null)
        expect "--time=0:01 on sleep 120 ends TIMEOUT" TIMEOUT "$(wait_final "$id" 150)"
        echo "info TIMEOUT reached after $((SECONDS - t0))s (limit rounds up to 1 min; checked every 30 s)"
    fi
    rm -rf "$tmp"
    echo "slurm: $passes passed, $fails failed"
    [ $fails -eq 0 ]
}

case $CMD in
    start) cmd_start ;;
    stop) stop_all ;;
    env) cmd_env ;;
    check) cmd_check ;;
    *) usage ;;
esac
