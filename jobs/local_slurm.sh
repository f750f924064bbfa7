#!/usr/bin/env bash
# A private single-node Slurm (with slurmdbd, so `sacct` works) on localhost, without systemd.
#
#   jobs/local_slurm.sh install   apt-get the Debian packages if missing (needs root)
#   jobs/local_slurm.sh start     install if needed, then start a FRESH instance; prints the
#                                 `export SLURM_CONF=...` line clients need (also in $DIR/env.sh)
#   jobs/local_slurm.sh status    which recorded daemons are alive; sinfo/squeue
#   jobs/local_slurm.sh stop      cancel our jobs, then kill only the PIDs this script recorded
#
# Everything (configs, munge key and socket, MariaDB data, spool, logs, PID files) lives under
# LANDSCAPE_SLURM_DIR (default /tmp/landscape-slurm); ports are LANDSCAPE_SLURM_PORT (default
# 16817) .. +3 for slurmctld, slurmd, slurmdbd, mariadbd. Nothing under /etc is changed.
#
# Facts this config encodes (Debian 12, Slurm 22.05, containers without cgroups/systemd):
# proctrack/linuxproc + task/none (no cgroups); DefMemPerCPU, or memory-less jobs take the whole
# node and run one at a time; EnforcePartLimits=ALL, so impossible requests fail at sbatch;
# batch_sched_delay=0 for fast round trips; cred_expire=5 and bf_interval=1, so a requeued job
# (preemption/time-out) starts again within seconds (Slurm holds it for cred_expire, default
# 120 s); slurmdbd, because submitit reads job states with sacct; the node advertises
# count-only GPUs backed by dummy files, so the default one-GPU request of
# configs/launcher/slurm.yaml is accepted and scheduled here.
set -euo pipefail

DIR="${LANDSCAPE_SLURM_DIR:-/tmp/landscape-slurm}"
PORT="${LANDSCAPE_SLURM_PORT:-16817}"
GPUS="${LANDSCAPE_SLURM_GPUS:-4}"          # dummy GPUs advertised by the node
MAX_TIME="${LANDSCAPE_SLURM_MAX_TIME:-60}" # partition MaxTime, minutes
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
BINARIES=(slurmctld slurmd sbatch sacct munged mungekey slurmdbd mariadbd mariadb-install-db)
NODE="$(hostname -s)"
CONF="$DIR/etc/slurm.conf"
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order

die() { echo "local_slurm.sh: $*" >&2; exit 1; }

missing_binaries() {
    local b; for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || echo "$b"
    done
}

install() {
    [ -z "$(missing_binaries)" ] && return 0
    [ "$(id -u)" = 0 ] \
        || die "missing: $(missing_binaries | xargs); run as root, or install ${PACKAGES[*]}"
    command -v apt-get >/dev/null \
        || die "Slurm packages missing and apt-get is not available (Debian/Ubuntu only)"
    # Keep the packages' init scripts from starting system-wide daemons: we run private ones.
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
    fi
    echo "local_slurm.sh: installing ${PACKAGES[*]} (apt-get)" >&2
    local rc=0 log="${TMPDIR:-/tmp}/landscape-slurm-apt.log"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${PACKAGES[@]}"; } >"$log" 2>&1 || rc=$?
    [ "$created" = 1 ] && rm -f "$policy"
    [ "$rc" = 0 ] || { tail -n 20 "$log" >&2; die "apt-get install failed (rc=$rc)"; }
}

write_configs() {
    local cpus mem_mb
    cpus="$(nproc)"
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
    mkdir -p "$DIR"/{etc,munge,mysql,spool/ctld,spool/d,log,run,dev}
    chmod 755 "$DIR/munge"
    local i; for ((i = 0; i < GPUS; i++)); do : >"$DIR/dev/gpu$i"; done

    cat >"$CONF" <<EOF
# Written by jobs/local_slurm.sh: a private single-node Slurm for tests.
ClusterName=landscape
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=5
CredType=cred/munge
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT + 2))
AccountingStoragePass=$DIR/munge/munge.socket
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=512
EnforcePartLimits=ALL
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=2
ReturnToService=2
KillWait=5
InactiveLimit=0
MinJobAge=300
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=$MAX_TIME State=UP
EOF
    cat >"$DIR/etc/gres.conf" <<EOF
NodeName=$NODE Name=gpu File=$DIR/dev/gpu[0-$((GPUS - 1))]
EOF
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=5
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"
    echo "export SLURM_CONF=$CONF" >"$DIR/env.sh"
}

# Run a daemon in the foreground of a detached session; record its PID.
launch() {
    local name="$1"; shift
    setsid "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 &
    echo $! >"$DIR/run/$name.launched.pid"
}

alive() { local f="$DIR/run/$1.launched.pid"; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }

wait_for() {  # wait_for <seconds> <what> <command...>
    local secs="$1" what="$2"; shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $end ]; then
            echo "local_slurm.sh: timed out waiting for $what; logs in $DIR/log" >&2
            tail -n 5 "$DIR"/log/*.log "$DIR"/log/*.out >&2 2>/dev/null
            return 1
        fi
        sleep 0.3
    done
}

node_idle() { [ "$(sinfo -h -n "$NODE" -o %t 2>/dev/null)" = idle ]; }

start() {
    install
    local d; for d in "${DAEMONS[@]}"; do
        alive "$d" && die "already running ($d, PID $(cat "$DIR/run/$d.launched.pid")); stop it first"
    done
    local p; for p in $(seq "$PORT" $((PORT + 3))); do
        if (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            die "port $p is in use (another Slurm or MariaDB?); set LANDSCAPE_SLURM_PORT"
        fi
    done
    # A fresh instance (job ids restart at 1, so old accounting must go too). Only a folder
    # this script made (or an empty one) is wiped.
    if [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ]; then
        grep -qs "Written by jobs/local_slurm.sh" "$CONF" \
            || die "$DIR exists and was not made by this script; set LANDSCAPE_SLURM_DIR elsewhere"
        rm -rf "$DIR"
    fi
    write_configs
    export SLURM_CONF="$CONF"
    trap 'echo "local_slurm.sh: start failed; stopping what it started" >&2; stop' EXIT

    mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null 2>&1 \
        || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge/munge.key"
    launch munged munged --foreground --force --socket="$DIR/munge/munge.socket" \
        --key-file="$DIR/munge/munge.key" --pid-file="$DIR/run/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    wait_for 20 munged munge --socket="$DIR/munge/munge.socket" --string=ok

    mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=root \
        --auth-root-authentication-method=normal --skip-test-db \
        >"$DIR/log/mariadb-install.log" 2>&1 \
        || die "mariadb-install-db failed; see $DIR/log/mariadb-install.log"
    launch mariadbd mariadbd --no-defaults --datadir="$DIR/mysql" --user=root \
        --socket="$DIR/run/mysqld.sock" --port=$((PORT + 3)) --bind-address=127.0.0.1 \
        --pid-file="$DIR/run/mariadbd.pid" --log-error="$DIR/log/mariadbd.log" --skip-log-bin \
        --innodb-buffer-pool-size=64M
    wait_for 60 mariadbd mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P $((PORT + 3)) \
        -u root -e "SELECT 1"

    launch slurmdbd slurmdbd -D
    wait_for 60 slurmdbd sacctmgr -n list cluster
    launch slurmctld slurmctld -D -i
    launch slurmd slurmd -D -N "$NODE"
    wait_for 60 "node $NODE to be idle" node_idle
    wait_for 30 "sacct" sacct -n -X
    trap - EXIT
    echo "local_slurm.sh: Slurm is up (node $NODE: $(nproc) CPUs, $GPUS dummy GPUs;" \
         "logs in $DIR/log)" >&2
    echo "export SLURM_CONF=$CONF"
}

stop() {
    if [ -f "$CONF" ] && alive slurmctld; then
        export SLURM_CONF="$CONF"
        scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
        local end=$((SECONDS + 20))
        while [ -n "$(squeue -h -o %i 2>/dev/null)" ] && [ $SECONDS -lt $end ]; do sleep 0.5; done
    fi
    local d pid pids=()
    for d in "${DAEMONS[@]}"; do  # all at once: this instance is thrown away, nothing to drain
        if alive "$d"; then
            pid="$(cat "$DIR/run/$d.launched.pid")"; pids+=("$pid")
            kill -TERM "$pid" 2>/dev/null || true
            echo "local_slurm.sh: stopping $d (PID $pid)" >&2
        fi
        rm -f "$DIR/run/$d.launched.pid"
    done
    local end=$((SECONDS + 15))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    done
}

status() {
    local d up=0
    for d in "${DAEMONS[@]}"; do
        if alive "$d"; then
            echo "$d: running (PID $(cat "$DIR/run/$d.launched.pid"))"; up=$((up + 1))
        else
            echo "$d: not running"
        fi
    done
    if [ "$up" = "${#DAEMONS[@]}" ]; then
        export SLURM_CONF="$CONF"; sinfo; squeue; return 0
    fi
    return 1
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status  (state in LANDSCAPE_SLURM_DIR=$DIR)" >&2
       exit 2 ;;
esac
