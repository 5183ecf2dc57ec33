"""One writer per run (the lease) and the attempt ledger's goodput arithmetic, on a local directory and on a
real S3 server (SeaweedFS conditional writes)."""

import json
import re
import time

import pytest

from msca.runstate.attempts import Attempt, summarize
from msca.runstate.lease import KEY, Holder, Lease, LeaseHeld, live_holder
from msca.storage import open_store

pytestmark = pytest.mark.slow  # real processes: launch.py, ranks, or clusters


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "home"))
    srv = request.getfixturevalue("s3_server")
    return srv.store(f"s3://{srv.make_bucket()}/runs/r")


def holder(job, attempt="a1"):
    return Holder(job_key=job, attempt=attempt, host="node1", pid=123, backend="slurm")


def test_second_job_is_refused_naming_the_holder(store):
    first = Lease(store, holder("slurm-11"), ttl_s=60, renew_s=0.2)
    first.acquire()
    first.start_renewing()  # alive: its lease object keeps changing
    with pytest.raises(LeaseHeld) as err:
        Lease(store, holder("slurm-22", "b1"), ttl_s=6).acquire()  # watches it change (polls every 0.5 s)
    msg = str(err.value)
    assert "slurm job slurm-11" in msg and "node1" in msg and re.search(r"renewed \d+s ago", msg) and "\n" not in msg
    assert live_holder(store, 6).job_key == "slurm-11"
    first.release()
    assert not store.exists(KEY) and live_holder(store, 60) is None
    Lease(store, holder("slurm-22", "b1"), ttl_s=60).acquire()  # free again


def test_requeued_attempt_of_the_same_job_takes_over_at_once(store):
    Lease(store, holder("slurm-11", "a1"), ttl_s=600).acquire()  # then the job was requeued (no release)
    again = Lease(store, holder("slurm-11", "a2"), ttl_s=600)
    again.acquire()
    assert json.loads(store.read_bytes(KEY))["attempt"] == "a2"


def test_silent_holder_is_taken_over_and_learns_it_lost(store):
    dead = Lease(store, holder("slurm-11"), ttl_s=0.5)
    dead.acquire()
    time.sleep(0.7)  # stopped renewing for longer than the ttl
    taker = Lease(store, holder("slurm-22", "b1"), ttl_s=0.5)
    taker.acquire()
    assert dead.renew() is False and "slurm-22" in dead.lost  # the old holder finds out at its next renewal
    assert taker.renew() is True
    dead.release()  # must not delete the new holder's lease
    assert json.loads(store.read_bytes(KEY))["job_key"] == "slurm-22"


def attempt(i, started, restored, last, step_s, first_after=5.0, restore_s=1.0, stall=2.0, wall=100.0, ended=True):
    return Attempt(
        id=f"a{i}",
        backend="local",
        job_key="k",
        hosts=["h"],
        world_size=2,
        started=started,
        restored_step=restored,
        restore_s=restore_s,
        first_step_at=started + first_after,
        last_step=last,
        step_s=step_s,
        checkpoint_stall_s=stall,
        heartbeat=started + wall,
        ended=started + wall if ended else None,
        end_reason="failed" if ended else None,
    )


def test_goodput_counts_recomputed_steps_as_badput():
    # attempt 1: steps 1-40 in 80 s, died; attempt 2 resumed from the commit at 30, so 10 steps were redone
    a1 = attempt(1, 0.0, 0, 40, 80.0, ended=False)
    a2 = attempt(2, 200.0, 30, 100, 140.0, first_after=10.0, restore_s=3.0, wall=160.0)
    s = summarize([a2, a1][::-1])
    assert s["attempts"] == 2 and s["wall"] == 260.0
    assert s["recomputed"] == pytest.approx(20.0)  # 10 steps x 2 s
    assert s["productive"] == pytest.approx(60.0 + 140.0)  # 30 kept steps of a1, all 70 of a2
    assert s["restore"] == pytest.approx(4.0) and s["startup"] == pytest.approx(4.0 + 7.0)
    assert s["checkpoint"] == pytest.approx(4.0)
    assert s["goodput"] == pytest.approx(200.0 / 260.0, abs=1e-4)
    assert sum(s["badput"].values()) + s["goodput"] == pytest.approx(1.0, abs=1e-3)


def test_a_holder_that_died_on_this_host_is_taken_over_at_once(store):
    import socket
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)  # a process that has exited (kill -9 of a job looks the same)
    crashed = Holder(job_key="local-1", attempt="a1", host=socket.gethostname(), pid=dead_pid, backend="local")
    Lease(store, crashed, ttl_s=600).acquire()
    assert live_holder(store, 600) is None  # the launcher lets a relaunch through at once
    Lease(store, holder("local-2", "b1"), ttl_s=600).acquire()
    assert json.loads(store.read_bytes(KEY))["job_key"] == "local-2"
