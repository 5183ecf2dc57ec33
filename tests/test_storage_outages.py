"""Routine outages cost a pause, not the run; an endpoint that never answers fails in bounded time with one
line naming it. Real faults: a SeaweedFS killed with SIGKILL and restarted on the same data, a TCP listener
that accepts and never answers."""

import socket
import threading
import time

import pytest
from s3_server import kill_server, restart_server, start_server, stop_server

from msca.storage import RETRY_S, open_store

pytestmark = pytest.mark.s3  # starts and kills its own SeaweedFS


@pytest.fixture
def own_server(tmp_path):
    """A server this test may kill (the session's shared one stays up)."""
    server = start_server(tmp_path / "weed")
    try:
        yield server
    finally:
        stop_server(server)


def test_reads_and_writes_ride_through_a_server_restart(own_server):
    store = own_server.store(f"s3://{own_server.make_bucket()}/frames")
    keys = [f"v/img_{i:05d}.jpg" for i in range(64)]
    store.write_many([(k, k.encode() * 50) for k in keys])
    kill_server(own_server)
    threading.Timer(7.0, restart_server, args=(own_server,)).start()  # back on the same data 7 s later
    t0 = time.time()
    got = store.read_many(keys, max_workers=64)  # 64 concurrent reads in the middle of the outage
    store.write_text("after-restart.txt", "ok")
    elapsed = time.time() - t0
    assert [g for g in got if isinstance(g, Exception)] == []
    assert got == [k.encode() * 50 for k in keys]
    assert store.read_text("after-restart.txt") == "ok"
    assert 5.0 < elapsed < RETRY_S


def test_silent_endpoint_fails_in_bounded_time_with_one_line():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # accepts connections (the kernel does), never answers
    port = listener.getsockname()[1]
    try:
        store = open_store(
            "s3://bucket/p",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="k",
            aws_secret_access_key="s",
            region_name="us-east-1",
            retry_s=4,
            read_timeout=1,
        )
        t0 = time.time()
        with pytest.raises(ConnectionError) as err:
            store.read_bytes("x.jpg")
        elapsed = time.time() - t0
    finally:
        listener.close()
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "did not answer" in msg and "\n" not in msg
    # the deadline counts from the operation's start (the lean GET included), plus one read timeout in flight;
    # the slack is for a loaded 2-core machine (the whole suite runs beside this test), not for the product
    assert 4.0 <= elapsed < 4.0 + 1.0 + 4.0
    assert RETRY_S + 20 <= 90  # defaults (60 s deadline, 20 s read timeout): reported within 90 s
