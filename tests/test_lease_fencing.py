"""A lease that fences (issue 17): a renewal whose reply was lost keeps the lease, staleness is judged on the
reader's own monotonic clock (never by comparing two machines' clocks), and the SLURM liveness shortcut only
applies to a holder on the same SLURM cluster. Real SeaweedFS (through a real TCP proxy) and a local store."""

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from msca.runstate.lease import KEY, Holder, Lease, LeaseHeld, live_holder, read_lease
from msca.storage import open_store

pytestmark = pytest.mark.slow  # real processes: a SeaweedFS server


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "home"))
    srv = request.getfixturevalue("s3_server")
    return srv.store(f"s3://{srv.make_bucket()}/runs/r")


def holder(job, attempt="a1", **kw):
    return Holder(job_key=job, attempt=attempt, host="node1", pid=123, backend="slurm", **kw)


# ---------------------------------------------------------------------------------- renewal under retries
class DropOneReply:
    """A TCP proxy in front of the S3 server. Once armed, it forwards the next conditional PUT (If-Match) to the
    server, then swallows the server's final reply (botocore's `Expect: 100-continue` is let through, so the
    body is sent) and closes the connection: the write happened, the client never
    heard of it and retries (the retry gets 412)."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.armed, self.dropped = threading.Event(), threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.sock.close()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            state = {"drop": False}
            threading.Thread(target=self._pipe, args=(client, server, state, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, state, False), daemon=True).start()

    def _pipe(self, src, dst, state, upstream):
        try:
            while data := src.recv(65536):
                if upstream and self.armed.is_set() and data.startswith(b"PUT ") and b"if-match" in data.lower():
                    self.armed.clear()
                    state["drop"] = True
                if not upstream and state["drop"] and not data.startswith(b"HTTP/1.1 100"):  # not "100 Continue"
                    self.dropped.set()
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_renewal_whose_reply_was_lost_keeps_the_lease(s3_server):
    proxy = DropOneReply(int(s3_server.endpoint_url.rsplit(":", 1)[1]))
    try:
        store = open_store(
            f"s3://{s3_server.make_bucket()}/runs/r",
            endpoint_url=f"http://127.0.0.1:{proxy.port}",
            aws_access_key_id=s3_server.access_key,
            aws_secret_access_key=s3_server.secret_key,
            region_name=s3_server.region,
        )
        lease = Lease(store, holder("slurm-11"), ttl_s=60)
        lease.acquire()
        proxy.armed.set()
        assert lease.renew() is True and lease.lost == ""
        assert proxy.dropped.is_set()  # the reply really was lost and the store's retry was refused
        assert lease.renew() is True and lease.lost == ""  # the adopted version is the current one
        assert json.loads(store.read_bytes(KEY))["attempt"] == "a1"
    finally:
        proxy.close()


def test_a_refused_renewal_that_is_our_own_write_is_kept_and_a_takeover_is_not(store):
    lease = Lease(store, holder("slurm-11"), ttl_s=60)
    lease.acquire()
    # our renewal landed but we never learnt its version (lost reply, or the read after it failed)
    store.write_bytes(KEY, json.dumps(asdict(replace(lease.holder, renewed=time.time() + 1))).encode())
    assert lease.renew() is True and lease.lost == ""
    assert lease.renew() is True
    Lease(store, holder("slurm-11", "a2"), ttl_s=60).acquire()  # a requeued attempt of the same job took it
    assert lease.renew() is False and "attempt a2" in lease.lost


# ---------------------------------------------------------------------------------- staleness by the reader
def skewed(h: Holder, skew_s: float) -> bytes:
    return json.dumps(asdict(replace(h, renewed=time.time() + skew_s))).encode()


def start_skewed_holder(store, skew_s: float, every_s: float = 0.1):
    """A live holder on a machine whose clock is `skew_s` off: it takes the lease, then rewrites it (store
    primitives only, compare-and-swap on what it last wrote) every `every_s`, each time stamping its own wrong
    clock. Returns (stop event, thread, errors seen by the thread)."""
    h, stop, errors = holder("slurm-11"), threading.Event(), []
    assert store.write_if_absent(KEY, skewed(h, skew_s))

    def renew(version):
        while not stop.wait(every_s):
            if not store.write_if_version(KEY, skewed(h, skew_s), version):
                errors.append("its lease was taken over")
                return
            version = store.read_versioned(KEY)[1]

    thread = threading.Thread(target=renew, args=(store.read_versioned(KEY)[1],), daemon=True)
    thread.start()
    return stop, thread, errors


def test_a_live_holder_whose_clock_is_10_minutes_behind_is_not_taken_over(store):
    stop, renewer, errors = start_skewed_holder(store, -600)
    try:
        assert Holder(**json.loads(store.read_bytes(KEY))).renewed < time.time() - 590  # "10 minutes old"
        with pytest.raises(LeaseHeld) as err:
            Lease(store, holder("slurm-22", "b1"), ttl_s=2).acquire()
        assert "slurm job slurm-11" in str(err.value) and "per its own clock" in str(err.value)
        assert live_holder(store, 2).job_key == "slurm-11"  # the launcher refuses too
    finally:
        stop.set()
        renewer.join(5)
    assert errors == [] and json.loads(store.read_bytes(KEY))["job_key"] == "slurm-11"


def test_a_silent_holder_whose_clock_is_ahead_is_taken_over_after_one_ttl_watched(store, caplog):
    """Judged on this reader's clock: unchanged for one TTL while the launcher watched. The launcher records
    that in the lease, so the job it starts (anywhere) takes the run without watching it a second time."""
    h = holder("slurm-11")
    assert store.write_if_absent(KEY, skewed(h, +600))  # looks fresh for 10 minutes, but nobody renews it
    t0 = time.monotonic()
    assert live_holder(store, 1.0) is None  # the launcher lets a relaunch through: unchanged for a TTL
    assert time.monotonic() - t0 >= 1.0
    assert "did not change for 1s" in read_lease(store)[0].released
    taker = Lease(store, holder("slurm-22", "b1"), ttl_s=1.0)
    t1 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="msca.runstate.lease"):
        taker.acquire()
    assert time.monotonic() - t1 < 1.0  # not a second TTL
    assert json.loads(store.read_bytes(KEY))["job_key"] == "slurm-22"
    said = [r.getMessage() for r in caplog.records]
    assert not any("watching its lease" in m for m in said), said
    assert any("recorded as ended: its lease did not change for 1s" in m for m in said), said


# ---------------------------------------------------------------------------------- SLURM shortcut, same cluster
@pytest.fixture
def slurm_cli_here(tmp_path, monkeypatch):
    """SLURM's CLI as on a cluster named "here" whose controller never heard of any job: `squeue -j` answers
    "Invalid job id specified". Fake scripts of SLURM's commands first on PATH; our code runs unchanged."""
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho 'ClusterName             = here'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_CLUSTER_NAME", raising=False)


def test_squeue_says_gone_only_for_a_holder_on_our_own_slurm_cluster(slurm_cli_here, tmp_path):
    assert holder("slurm-11", cluster="here").died_here()  # our cluster, purged job: gone at once
    assert not holder("slurm-11", cluster="other").died_here()  # job 11 there may well be running
    assert not holder("slurm-11").died_here()  # no cluster recorded (an older lease): no shortcut
    store = open_store(str(tmp_path / "home"))
    assert store.write_if_absent(KEY, json.dumps(asdict(holder("slurm-11", cluster="other"))).encode())
    t0 = time.monotonic()
    taker = Lease(store, holder("slurm-22", "b1"), ttl_s=1.0)
    taker.acquire()  # taken over only after its lease stayed unchanged for a TTL watched here
    assert time.monotonic() - t0 >= 1.0


def test_a_job_records_its_slurm_cluster_in_the_lease(slurm_cli_here, tmp_path, monkeypatch):
    from msca.runstate.home import RunHome
    from msca.runstate.session import RunSession

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("MSCA_JOB_KEY", raising=False)
    session = RunSession.open(RunHome(str(tmp_path / "run")), ["node1"], 1)
    try:
        lease = json.loads((tmp_path / "run" / KEY).read_text())
        assert lease["job_key"] == "slurm-4242" and lease["cluster"] == "here"
    finally:
        session.close("finished")


# ---------------------------------------------------------------------------------- a held lease is one line
RANK_SCRIPT = """
import logging, os, sys, time
import torch.distributed as tdist
rank = int(sys.argv[1])
os.environ["RANK"] = str(rank)
tdist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=rank, world_size=2)
logging.basicConfig(level=logging.INFO)
from msca.runstate.lease import LeaseHeld
from msca.runtime import failure
from msca.runtime.collective import agreed

def take():
    if rank == 0:
        raise LeaseHeld("run /runs/r is held by slurm job slurm-11 (attempt a1, pid 123 on node1); wait for it")

try:
    agreed(take, "taking the run's lease")
except Exception as err:
    time.sleep(1.0 if rank == 0 else 0.0)  # the collateral rank records first
    failure.record(err)
    logging.getLogger("jobs").error("%s", failure.one_line(err))
"""


def test_a_held_lease_is_one_line_named_for_the_rank_that_hit_it(tmp_path):
    import subprocess
    import sys

    from msca.runtime import failure
    from msca.runtime.dist import free_port

    errors = tmp_path / "errors"
    env = dict(os.environ, MSCA_ERROR_DIR=str(errors), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    port = str(free_port())
    ranks = [
        subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(r), port], env=env, stderr=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]
    logs = [p.communicate(timeout=120)[1] for p in ranks]
    assert all(p.returncode == 0 for p in ranks), logs
    assert "Traceback" not in logs[0], logs[0]  # an expected error: no traceback in the rank's log
    said = failure.first_failure(errors)
    assert said.startswith("rank 0 on ") and "failed first: LeaseHeld: run /runs/r is held by slurm job" in said
    assert "\n" not in said and "(at " not in said, said


# ---------------------------------------------------------------------------------- conditional-write probe
class StubS3(threading.Thread):
    """A tiny S3 endpoint (PUT, GET, HEAD, DELETE of objects in one bucket; no auth) that does what some
    S3-compatible servers do with conditional writes: `mode="ignore"` writes whatever the If-None-Match /
    If-Match headers say, `mode="501"` answers 501 NotImplemented to any conditional PUT."""

    def __init__(self, mode: str):
        import http.server
        import uuid as _uuid

        objects: dict = {}

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body=b"", headers=None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_PUT(self):
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if mode == "501" and (self.headers.get("If-None-Match") or self.headers.get("If-Match")):
                    body = b"<Error><Code>NotImplemented</Code><Message>conditional PUT</Message></Error>"
                    return self._send(501, body, {"Content-Type": "application/xml"})
                etag = f'"{_uuid.uuid4().hex}"'
                objects[self.path] = (data, etag)
                self._send(200, headers={"ETag": etag})

            def do_GET(self):
                if "/" not in self.path.strip("/").split("?")[0]:  # the bucket itself (HEAD bucket)
                    return self._send(200)
                if self.path not in objects:
                    body = b"<Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>"
                    return self._send(404, body, {"Content-Type": "application/xml"})
                data, etag = objects[self.path]
                self._send(200, data, {"ETag": etag})

            do_HEAD = do_GET

            def do_DELETE(self):
                objects.pop(self.path, None)
                self._send(204)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        super().__init__(target=self.server.serve_forever, daemon=True)
        self.start()


@pytest.mark.parametrize(
    "mode,said", [("ignore", "ignores conditional writes (If-None-Match, If-Match)"), ("501", "answered 501")]
)
def test_an_endpoint_that_ignores_or_refuses_preconditions_cannot_hold_a_lease(monkeypatch, mode, said):
    from msca.runtime.errors import is_deterministic, is_user_error
    from msca.storage import ConditionalWritesUnsupported

    stub = StubS3(mode)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "stub")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "stub")
    store = open_store("s3://bucket/runs/r", endpoint_url=stub.url)
    t0 = time.monotonic()
    with pytest.raises(ConditionalWritesUnsupported) as raised:
        Lease(store, holder("slurm-11"), ttl_s=60).acquire()
    took = time.monotonic() - t0
    stub.server.shutdown()
    message = str(raised.value)
    assert said in message and "cannot guarantee one writer per run" in message and "\n" not in message
    assert "bucket 'bucket'" in message and stub.url.split("//")[1] in message
    assert is_user_error(raised.value) and is_deterministic(raised.value)
    assert took < 10  # a 501 is an answer, not an outage: no 60 s of retries
    assert not store.exists(KEY)  # no lease was written


def test_seaweedfs_passes_the_conditional_write_probe_and_leaves_nothing(s3_server):
    store = s3_server.store(f"s3://{s3_server.make_bucket()}/runs/r")
    store.check_conditional_writes()
    assert store.list("") == []


# ---------------------------------------------------------------------------------- a death proven here is recorded
HOLD = """
import sys, time
from msca.runstate.lease import Holder, Lease
from msca.storage import open_store
import os, socket
lease = Lease(open_store(sys.argv[1]), Holder("local-1", "a1", socket.gethostname(), os.getpid(), "local"), ttl_s=60)
lease.acquire()
print("holding", flush=True)
time.sleep(600)
"""

TAKE = """
import sys, time
from msca.runstate.lease import Holder, Lease
from msca.storage import open_store
t0 = time.monotonic()
Lease(open_store(sys.argv[1]), Holder("slurm-5", "b1", "node9", 1, "slurm"), ttl_s=60).acquire()
print(f"took it in {time.monotonic() - t0:.1f}s")
"""


def test_a_holder_proven_dead_on_this_host_is_recorded_so_a_job_elsewhere_takes_the_run_at_once(tmp_path):
    """A local run killed -9, then relaunched elsewhere (cluster=slurm): launch.py sees the holder's pid gone on
    its own host and records that in the lease; the job on another host, which cannot see this host's pids,
    then takes the run at once instead of watching the lease for a whole TTL (60 s here)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    home = str(tmp_path / "home")
    held = subprocess.Popen([sys.executable, "-c", HOLD, home], env=env, stdout=subprocess.PIPE, text=True)
    assert held.stdout.readline().strip() == "holding"
    held.kill()
    held.wait()
    store = open_store(home)
    assert live_holder(store, ttl_s=60) is None  # what launch.py asks before it submits
    holder, _ = read_lease(store)
    assert holder.pid == held.pid and "its process is gone" in holder.released
    taken = subprocess.run(
        ["unshare", "--uts", "sh", "-c", 'hostname node9 && exec "$0" -c "$1" "$2"', sys.executable, TAKE, home],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert taken.returncode == 0, taken.stderr
    seconds = float(taken.stdout.split("took it in ")[1].rstrip("s\n"))
    assert seconds < 30, taken.stdout  # not after watching the lease for its 60 s TTL
    print(f"a job on another host took the released lease in {seconds:.1f}s (TTL 60 s)")
    assert "recorded as ended: its process is gone" in taken.stderr
    assert read_lease(store)[0].job_key == "slurm-5"
