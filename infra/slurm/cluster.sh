#!/bin/bash
# A real two-node SLURM on this one machine, for tests and development (root; no systemd).
#
#   infra/slurm/cluster.sh install        apt packages, idempotent (slurm-wlm munge slurmdbd mariadb-server)
#   infra/slurm/cluster.sh up DIR         start it, state and logs under DIR; prints `export SLURM_CONF=...`
#   infra/slurm/cluster.sh down DIR       stop every process by PID, remove namespaces and bridge
#
# Layout (why: multi-node code paths -- rendezvous from the node list, cross-node collectives, signals on every
# node -- run for real; see ../../README and shared infra notes §8):
#   root ns     bridge msca-br0 10.77.0.254/24, munged (private socket under DIR)
#   msca-ctl    hostname ctl   10.77.0.3   slurmctld, slurmdbd, MariaDB (127.0.0.1:3307 inside the namespace)
#   msca-node1  hostname node1 10.77.0.1   slurmd
#   msca-node2  hostname node2 10.77.0.2   slurmd
# Each daemon runs in its netns plus its own UTS and mount namespace, where private /etc/hosts and
# /etc/resolv.conf are bind-mounted; jobs inherit them from slurmd. No default route: nothing leaves
# 10.77.0.0/24. Never `ip netns exec` for slurmd (it remounts /sys and hides the cgroup fs).
set -euo pipefail
NODES=(node1 node2)  # both in partitions `debug` (default, preemptible: REQUEUE) and `urgent` (preempts debug)
declare -A ADDR=([ctl]=10.77.0.3 [node1]=10.77.0.1 [node2]=10.77.0.2)
BR=msca-br0
OWNER=/run/msca-slurm.owner   # which DIR holds the (fixed-name) namespaces

log() { echo "[slurm-cluster] $*" >&2; }

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v slurmdbd >/dev/null \
     && command -v munged >/dev/null && command -v mariadbd >/dev/null && command -v sbatch >/dev/null; then
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client slurmdbd munge mariadb-server \
    >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends \
    slurmctld slurmd slurm-client slurmdbd munge mariadb-server >/dev/null; }
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Run a command in namespace NAME with hostname NAME and the private hosts/resolv files; print its PID.
# nsenter (net) and unshare (uts, mount) exec without forking, so $! is the daemon's own PID.
spawn() {
  local name=$1 logf=$2; shift 2
  setsid nsenter --net=/run/netns/msca-$name unshare --uts --mount -- bash -c \
    'hostname "$0"; mount --bind "$1/etc/hosts" /etc/hosts; mount --bind "$1/etc/resolv.conf" /etc/resolv.conf
     ip link set lo up; shift; exec "$@"' "$name" "$B" "$@" </dev/null >>"$logf" 2>&1 &
  echo $!
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
  local n=$(( $1 * 5 )) what=$2; shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "timed out waiting for $what"; return 1
}

write_configs() {
  mkdir -p "$B"/{etc,state,spool,log,run,db,munge}
  printf '127.0.0.1 localhost\n10.77.0.1 node1\n10.77.0.2 node2\n10.77.0.3 ctl\n' >"$B/etc/hosts"
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$B/etc/resolv.conf"
  cat >"$B/etc/slurm.conf" <<CONF
ClusterName=msca
SlurmctldHost=ctl(10.77.0.3)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$B/munge/munge.sock,cred_expire=10
StateSaveLocation=$B/state
SlurmdSpoolDir=$B/spool/%n
SlurmctldPidFile=$B/run/slurmctld.pid
SlurmdPidFile=$B/run/slurmd-%n.pid
SlurmctldLogFile=$B/log/slurmctld.log
SlurmdLogFile=$B/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
KillOnBadExit=1
MinJobAge=300
SchedulerParameters=sched_interval=2,bf_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=10.77.0.3
AccountingStoragePort=6819
AccountingStoragePass=$B/munge/munge.sock
NodeName=node1 NodeAddr=10.77.0.1 CPUs=$(getconf _NPROCESSORS_ONLN) RealMemory=4000 State=UNKNOWN
NodeName=node2 NodeAddr=10.77.0.2 CPUs=$(getconf _NPROCESSORS_ONLN) RealMemory=4000 State=UNKNOWN
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=10
PartitionName=urgent Nodes=node1,node2 MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
CONF
  cat >"$B/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$B/munge/munge.sock
DbdHost=ctl
DbdAddr=10.77.0.3
DbdPort=6819
SlurmUser=root
LogFile=$B/log/slurmdbd.log
PidFile=$B/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$B/etc/slurmdbd.conf"
}

network() {
  ip link add $BR type bridge
  ip addr add 10.77.0.254/24 dev $BR
  ip link set $BR up
  for n in ctl "${NODES[@]}"; do
    ip netns add msca-$n
    ip link add msca-v-$n type veth peer name eth0 netns msca-$n
    ip link set msca-v-$n master $BR up
    ip -n msca-$n addr add "${ADDR[$n]}/24" dev eth0
    ip -n msca-$n link set eth0 up
    ip -n msca-$n link set lo up
  done
}

up() {
  if ip link show $BR >/dev/null 2>&1; then
    local other; other=$(cat $OWNER 2>/dev/null || true)
    if [ -n "$other" ] && alive "$other/run/slurmctld.pid.own"; then
      log "a two-node cluster is already up, state in $other (stop it: $0 down $other)"; exit 1
    fi
    log "removing a stale cluster (${other:-unknown owner})"; teardown "${other:-/nonexistent}"
  fi
  install
  rm -rf "$B"; mkdir -p "$B"; B=$(cd "$B" && pwd)
  write_configs
  mkdir -p "$B/tmp"; chmod 1777 "$B/tmp"; export TMPDIR=$B/tmp  # daemons run as munge/mysql: not the caller's TMPDIR
  trap 'log "failed (line $LINENO); log tails:"; tail -n 5 "$B"/log/* >&2' ERR
  echo "$B" >$OWNER
  network
  export SLURM_CONF=$B/etc/slurm.conf
  # munged in the root namespace; a unix socket path works across network namespaces
  chown munge:munge "$B/munge"; chmod 0755 "$B/munge"
  runuser -u munge -- mungekey -c -k "$B/munge/munge.key" -b 1024
  setsid runuser -u munge -- munged -F --force --socket="$B/munge/munge.sock" --key-file="$B/munge/munge.key" \
    --pid-file="$B/munge/munged.pid" --log-file="$B/log/munged.log" --seed-file="$B/munge/munged.seed" \
    </dev/null >>"$B/log/munged.out" 2>&1 &
  wait_for 10 munged test -S "$B/munge/munge.sock"
  cp "$B/munge/munged.pid" "$B/run/munged.pid.own" 2>/dev/null || pgrep -n -u munge -x munged >"$B/run/munged.pid.own"
  # MariaDB for slurmdbd (job states must be exact for submitit: sacct)
  chown mysql:mysql "$B/db"
  mariadb-install-db --user=mysql --datadir="$B/db/data" --auth-root-authentication-method=normal \
    --skip-test-db >"$B/log/mariadb-install.log" 2>&1
  spawn ctl "$B/log/mariadb.out" mariadbd --user=mysql --datadir="$B/db/data" --socket="$B/db/mysql.sock" \
    --pid-file="$B/db/mariadb.pid" --bind-address=127.0.0.1 --port=3307 --skip-name-resolve \
    --innodb-buffer-pool-size=32M --log-error="$B/log/mariadb.log" >"$B/run/mariadbd.pid.own"
  wait_for 30 MariaDB mariadb -S "$B/db/mysql.sock" -uroot -e 'select 1'
  mariadb -S "$B/db/mysql.sock" -uroot -e "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  spawn ctl "$B/log/slurmdbd.out" slurmdbd -D >"$B/run/slurmdbd.pid.own"
  wait_for 30 slurmdbd sacctmgr -n show cluster
  sacctmgr -i add cluster msca >/dev/null
  spawn ctl "$B/log/slurmctld.out" slurmctld -D -i >"$B/run/slurmctld.pid.own"
  for n in "${NODES[@]}"; do
    mkdir -p "$B/spool/$n"
    spawn $n "$B/log/slurmd-$n.out" slurmd -D >"$B/run/slurmd-$n.pid.own"
  done
  wait_for 30 "both nodes idle" bash -c '[ "$(sinfo -h -N -p debug -o %t | grep -c idle)" = 2 ]'
  log "up: node1 node2 idle; state in $B"
  echo "export SLURM_CONF=$B/etc/slurm.conf"
}

# Stop by PID: every process inside our namespaces (daemons, slurmstepd, job tasks; `ip netns pids`), then
# munged. slurmstepd and srun ignore SIGTERM: 3 s, then SIGKILL.
teardown() {
  local dir=$1 pids=()
  for n in "${NODES[@]}" ctl; do
    [ -e /run/netns/msca-$n ] && pids+=($(ip netns pids msca-$n 2>/dev/null || true))
  done
  for f in "$dir"/run/*.pid.own; do [ -f "$f" ] && pids+=("$(cat "$f")"); done
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 15); do
    local left=(); for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left+=("$p"); done
    [ ${#left[@]} -eq 0 ] && break; sleep 0.2
  done
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true; done
  for n in "${NODES[@]}" ctl; do
    ip link del msca-v-$n 2>/dev/null || true
    [ -e /run/netns/msca-$n ] && ip netns del msca-$n || true
  done
  ip link del $BR 2>/dev/null || true
  rm -f "$dir"/run/*.pid.own
  [ "$(cat $OWNER 2>/dev/null)" = "$dir" ] && rm -f $OWNER || true
}

cmd=${1:-}; B=${2:-}
case $cmd in
  install) install ;;
  up) [ -n "$B" ] || { echo "usage: $0 up DIR" >&2; exit 2; }; up ;;
  down) [ -n "$B" ] || { echo "usage: $0 down DIR" >&2; exit 2; }; B=$(cd "$B" 2>/dev/null && pwd || echo "$B")
        teardown "$B"; log "down" ;;
  *) sed -n '2,8p' "$0" >&2; exit 2 ;;
esac
