"""A job that can no longer prove it holds the run's lease writes nothing to the run home (issue 17).

Real processes: a 2-rank local launch whose rank 0 is frozen (SIGSTOP) right after a step, before that step's
writes, for longer than the lease's TTL; meanwhile a contender on another host (its own UTS namespace, so the
frozen holder's pid means nothing to it) watches the lease unchanged for a whole TTL and takes the run over.
When the frozen job continues, it must write nothing: no metrics, no checkpoint, no manifest, no retention."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch_helpers import REPO, small_overrides, start_launch
from test_resume import rank_pids

from msca.runstate.lease import read_lease
from msca.storage import open_store

pytestmark = pytest.mark.slow  # real processes: launch.py and its ranks

TTL_S = 5

INTRUDER = """
import sys
from msca.runstate.lease import Holder, Lease
from msca.storage import open_store
lease = Lease(open_store(sys.argv[1]), Holder("slurm-77", "i1", "node9", 1, "slurm"), ttl_s=float(sys.argv[2]))
lease.acquire()
print("took it over")
"""


def snapshot(home: Path) -> dict:
    """Every file of the run's state with its digest (the launcher's logs and the attempt records aside: they
    say how this attempt ended, and belong to it)."""
    out = {}
    for p in sorted(home.rglob("*")):
        rel = p.relative_to(home).as_posix()
        if p.is_file() and rel.split("/")[0] not in ("logs", "attempts") and rel != "lease.json":
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def stopped(pid: int) -> bool:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T"


def test_a_job_frozen_past_its_lease_and_taken_over_writes_nothing_more(tmp_path):
    name = "fenced"
    home = tmp_path / "store" / "runs" / name
    overrides = small_overrides(tmp_path, tmp_path / "data", name) + [
        "cluster.procs_per_node=2",
        "deepspeed=zero2",
        "train.epochs=20",
        "train.val_every=1",
        "eval.at_end=false",
        "data.batch_size=2",
        "checkpoint.every_steps=1",
        "checkpoint.keep_last=1",
    ]
    env = {"MSCA_LEASE_TTL_S": str(TTL_S), "MSCA_FAULT_INJECT": "pause@0:8"}
    proc = start_launch(overrides, env=env, start_new_session=True)
    try:
        pids = rank_pids(proc.pid, time.time() + 180)
        deadline = time.time() + 180
        while not stopped(pids[0]):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        # another host's job: it cannot see the frozen pid, so it watches the lease for a whole TTL
        intruder = subprocess.run(
            ["unshare", "--uts", "sh", "-c", 'hostname node9 && exec "$0" -c "$1" "$2" "$3"']
            + [sys.executable, INTRUDER, str(home), str(TTL_S)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert intruder.returncode == 0 and "took it over" in intruder.stdout, intruder.stderr
        before = snapshot(home)
        assert "checkpoints/step_000000006/MANIFEST.json" in before  # it was committing every step until now
        os.kill(pids[0], signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode not in (0, None), out + err
    assert snapshot(home) == before  # nothing written, nothing deleted
    holder, _ = read_lease(open_store(str(home)))
    assert holder.job_key == "slurm-77"  # the successor's lease is untouched
    said = out + err  # rank 0 logs to the launcher's terminal; the launcher names the cause
    assert "LeaseLost: the run's lease was taken over by slurm job slurm-77" in said, said[-3000:]
    assert "stopped without writing to" in said and "Traceback" not in said, said[-3000:]
