#!/bin/bash
# A real Ray cluster on this one machine, for tests and development; every process stopped by PID.
#
#   infra/ray/cluster.sh up DIR [CPUS]   one node (head) on 127.0.0.1; prints `export RAY_API_SERVER_ADDRESS=http://...`
#                                        (the dashboard's Jobs API) and, last, `export RAY_ADDRESS=...` (the GCS)
#   infra/ray/cluster.sh up2 DIR         two nodes: head in namespace msca-ray-node1 (hostname node1, 10.78.0.1),
#                                        worker node in msca-ray-node2 (node2, 10.78.0.2), one CPU each; root
#   infra/ray/cluster.sh down DIR        stop what `up`/`up2` started from DIR (by PID), remove its namespaces
#   infra/ray/cluster.sh kill-node2 DIR  (up2) node2 dies: SIGKILL to every process in its namespace
#   infra/ray/cluster.sh start-node2 DIR (up2) a fresh node2 (empty local disk) joins the head
#   infra/ray/cluster.sh exec DIR CMD..  run CMD on node1 (its network, hostname and hosts file): a driver there
#                                        reaches the head like a user logged into a cluster's head node
#
# Every node runs with this checkout's .venv first on PATH, so a Jobs API entrypoint's `python` has msca's
# dependencies (a real cluster's image does the same), and RAY_JOB_STOP_WAIT_TIME_S=300: `ray job stop` sends the
# job's launch.py SIGTERM and Ray's default SIGKILL 3 s later would leave no time for the stop checkpoint.
#
# The two nodes find S3 credentials through their own chain, as a real site's nodes do (an instance role, a
# provisioned file): AWS_SHARED_CREDENTIALS_FILE=DIR/etc/aws-credentials, which whoever owns the cluster writes
# (tests: the ray_s3 fixture). msca never ships secrets in a job's runtime_env (msca.cluster.ray_env).
#
# Never `ray stop`: it kills every Ray process on the host, other people's included. Each node is one
# `ray start --block` process in its own session; `down` sends it SIGTERM (it stops its raylet, GCS, workers),
# then kills whatever is left in that session and in our namespaces.
#
# Two nodes (shared infra notes §8), the same recipe as infra/slurm/cluster.sh (netns + veth into a bridge, own
# UTS and mount namespace with private /etc/hosts and /etc/resolv.conf, no default route) but under its own
# names and subnet (bridge msca-rbr0, 10.78.0.0/24): the SLURM cluster's `up`/`down` remove and kill everything
# in *its* namespaces, so sharing them would let a SLURM test session kill a running Ray test and vice versa.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RAY="${RAY:-$here/.venv/bin/ray}"
BR=msca-rbr0
declare -A ADDR=([node1]=10.78.0.1 [node2]=10.78.0.2)
PORT=6379
DASHBOARD_PORT=8265
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
export PATH="$here/.venv/bin:$PATH" RAY_JOB_STOP_WAIT_TIME_S=${RAY_JOB_STOP_WAIT_TIME_S:-300}
COMMON=(--block --disable-usage-stats --object-store-memory=100000000)
HEAD=(--head --include-dashboard=true)  # --dashboard-host: the node's own address (127.0.0.1 or node1's)

log() { echo "[ray-cluster] $*" >&2; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_nodes() {  # wait_nodes ADDRESS N PIDFILE [NETNS]: until N nodes are alive (fails when PIDFILE's process died)
  local n=$2 run=(); [ -n "${4:-}" ] && run=(nsenter --net=/run/netns/$4)
  for _ in $(seq 120); do
    alive "$3" || { log "$(basename "$3" .pid) exited; logs:"; tail -n 20 "$B"/log/*.out >&2; return 1; }
    got=$("${run[@]}" "$here/.venv/bin/python" - "$1" <<'PY' 2>/dev/null || true
import sys
from ray._raylet import GcsClient
try:
    c = GcsClient(address=sys.argv[1], cluster_id=None)
    print(sum(1 for n in c.get_all_node_info(timeout=2).values() if n.state == 0))
except Exception:
    print(0)
PY
)
    [ "${got:-0}" = "$n" ] && return 0
    sleep 0.5
  done
  log "timed out waiting for $n node(s) at $1; logs:"; tail -n 20 "$B"/log/*.out >&2; return 1
}

wait_dashboard() {  # wait_dashboard URL PIDFILE: until the Jobs API answers
  for _ in $(seq 120); do
    alive "$2" || { log "$(basename "$2" .pid) exited; logs:"; tail -n 20 "$B"/log/*.out >&2; return 1; }
    "$here/.venv/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
      "$1/api/version" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "the dashboard at $1 did not answer; logs:"; tail -n 20 "$B"/log/*.out >&2; return 1
}

addresses() {  # addresses IP GCS_PORT DASHBOARD_PORT: what a client exports (RAY_ADDRESS last)
  echo "export RAY_API_SERVER_ADDRESS=http://$1:$3"
  echo "export RAY_ADDRESS=$1:$2"
}

up_local() {
  local cpus=${1:-2}
  alive "$B/run/head.pid" && { log "already up (pid $(cat "$B/run/head.pid"))"; addresses 127.0.0.1 "$(cat "$B/run/port")" "$(cat "$B/run/dashboard_port")"; return 0; }
  mkdir -p "$B"/{run,log,t}
  local port dash; read -r port dash < <("$here/.venv/bin/python" -c '
import socket; s = [socket.socket() for _ in range(2)]; [x.bind(("127.0.0.1", 0)) for x in s]
print(*(x.getsockname()[1] for x in s))')
  echo "$port" >"$B/run/port"; echo "$dash" >"$B/run/dashboard_port"
  setsid "$RAY" start "${HEAD[@]}" --dashboard-host=127.0.0.1 --dashboard-port="$dash" --node-ip-address=127.0.0.1 --port="$port" \
    --num-cpus="$cpus" --temp-dir="$B/t" "${COMMON[@]}" </dev/null >>"$B/log/head.out" 2>&1 &
  echo $! >"$B/run/head.pid"
  wait_nodes "127.0.0.1:$port" 1 "$B/run/head.pid"
  wait_dashboard "http://127.0.0.1:$dash" "$B/run/head.pid"
  log "up: one node on 127.0.0.1:$port (Jobs API http://127.0.0.1:$dash), state in $B"
  addresses 127.0.0.1 "$port" "$dash"
}

network() {
  if ip link show $BR >/dev/null 2>&1; then
    local other; other=$(cat /run/msca-ray.owner 2>/dev/null || true)
    if [ -n "$other" ] && [ "$other" != "$B" ] && alive "$other/run/node1.pid"; then
      log "a two-node Ray cluster is already up, state in $other (stop it: $0 down $other)"; exit 1
    fi
    log "removing a stale two-node Ray network (${other:-unknown owner})"; teardown "${other:-/nonexistent}"
  fi
  echo "$B" >/run/msca-ray.owner
  ip link add $BR type bridge
  ip addr add 10.78.0.254/24 dev $BR
  ip link set $BR up
  for n in node1 node2; do
    ip netns add msca-ray-$n
    ip link add msca-rv-$n type veth peer name eth0 netns msca-ray-$n
    ip link set msca-rv-$n master $BR up
    ip -n msca-ray-$n addr add "${ADDR[$n]}/24" dev eth0
    ip -n msca-ray-$n link set eth0 up
    ip -n msca-ray-$n link set lo up
  done
}

# Run a command on node NAME (its netns, hostname NAME, private hosts/resolv); nsenter and unshare exec
# without forking, so $! is the command's own PID.
spawn() {
  local name=$1 logf=$2; shift 2
  mkdir -p "$B/local/$name"  # the node's own disk: caches and checkpoint staging are per node, as on a cluster
  setsid env MSCA_CACHE="$B/local/$name/cache" TMPDIR="$B/local/$name" AWS_SHARED_CREDENTIALS_FILE="$B/etc/aws-credentials" \
    nsenter --net=/run/netns/msca-ray-$name unshare --uts --mount -- bash -c \
    'hostname "$0"; mount --bind "$1/etc/hosts" /etc/hosts; mount --bind "$1/etc/resolv.conf" /etc/resolv.conf
     shift; exec "$@"' "$name" "$B" "$@" </dev/null >>"$logf" 2>&1 &
  echo $!
}

up_two() {
  alive "$B/run/node1.pid" && { log "already up"; addresses ${ADDR[node1]} $PORT $DASHBOARD_PORT; return 0; }
  mkdir -p "$B"/{run,log,etc,t1,t2}
  printf '127.0.0.1 localhost\n10.78.0.1 node1\n10.78.0.2 node2\n' >"$B/etc/hosts"
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$B/etc/resolv.conf"
  trap 'log "failed (line $LINENO)"; tail -n 5 "$B"/log/* >&2' ERR
  network
  spawn node1 "$B/log/node1.out" "$RAY" start "${HEAD[@]}" --dashboard-host=${ADDR[node1]} --dashboard-port=$DASHBOARD_PORT --node-ip-address=${ADDR[node1]} --port=$PORT --num-cpus=1 \
    --temp-dir="$B/t1" "${COMMON[@]}" >"$B/run/node1.pid"
  wait_nodes "${ADDR[node1]}:$PORT" 1 "$B/run/node1.pid" msca-ray-node1
  start_node2
  wait_dashboard "http://${ADDR[node1]}:$DASHBOARD_PORT" "$B/run/node1.pid"
  log "up: node1 (head) and node2 at ${ADDR[node1]}:$PORT, Jobs API http://${ADDR[node1]}:$DASHBOARD_PORT; state in $B"
  addresses ${ADDR[node1]} $PORT $DASHBOARD_PORT
}

start_node2() {  # the worker node joins the head; started again after kill-node, it is a fresh machine
  rm -rf "$B/local/node2" "$B/t2"; mkdir -p "$B/t2"  # (empty local disk: no cache, no staged checkpoints)
  spawn node2 "$B/log/node2.out" "$RAY" start --address=${ADDR[node1]}:$PORT --node-ip-address=${ADDR[node2]} \
    --num-cpus=1 --temp-dir="$B/t2" "${COMMON[@]}" >"$B/run/node2.pid"
  wait_nodes "${ADDR[node1]}:$PORT" 2 "$B/run/node2.pid" msca-ray-node1
}

kill_node2() {  # node2 vanishes at once: SIGKILL to every process in its namespace (raylet, agents, workers)
  local pids; pids=$(ip netns pids msca-ray-node2 2>/dev/null || true)
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
  rm -f "$B/run/node2.pid"
  log "node2 killed (${pids//$'\n'/ })"
}

session_pids() {  # every process whose session id is $1 (what `ray start` and its children run in)
  local sid=$1 f
  for f in /proc/[0-9]*/stat; do
    awk -v s="$sid" '{ sub(/^.*\) /, ""); if ($4 == s) print FILENAME }' "$f" 2>/dev/null
  done | sed 's#/proc/\([0-9]*\)/stat#\1#'
}

teardown() {
  local dir=$1 pids=() f
  for f in "$dir"/run/*.pid; do
    [ -f "$f" ] || continue
    local p; p=$(cat "$f"); pids+=("$p"); pids+=($(session_pids "$p"))
  done
  for n in node1 node2; do
    [ -e /run/netns/msca-ray-$n ] && [ "$(cat /run/msca-ray.owner 2>/dev/null)" = "$dir" ] \
      && pids+=($(ip netns pids msca-ray-$n 2>/dev/null || true))
  done
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 50); do
    local left=(); for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left+=("$p"); done
    [ ${#left[@]} -eq 0 ] && break; sleep 0.2
  done
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true; done
  if [ "$(cat /run/msca-ray.owner 2>/dev/null)" = "$dir" ] || [ "$dir" = /nonexistent ]; then
    for n in node1 node2; do
      ip link del msca-rv-$n 2>/dev/null || true
      [ -e /run/netns/msca-ray-$n ] && ip netns del msca-ray-$n || true
    done
    ip link del $BR 2>/dev/null || true
    rm -f /run/msca-ray.owner
  fi
  rm -f "$dir"/run/*.pid
}

cmd=${1:-}; B=${2:-}
[ -n "$B" ] || { sed -n '2,12p' "$0" >&2; exit 2; }
mkdir -p "$B"; B=$(cd "$B" && pwd)
case $cmd in
  up) up_local "${3:-2}" ;;
  up2) up_two ;;
  down) teardown "$B"; log "down" ;;
  kill-node2) kill_node2 ;;
  start-node2) start_node2; log "node2 joined" ;;
  exec) shift 2; exec nsenter --net=/run/netns/msca-ray-node1 unshare --uts --mount -- bash -c \
          'hostname node1; mount --bind "$0/etc/hosts" /etc/hosts; mount --bind "$0/etc/resolv.conf" /etc/resolv.conf
           exec "$@"' "$B" "$@" ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
