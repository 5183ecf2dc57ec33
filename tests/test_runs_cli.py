"""`python -m msca.runs`: a store's runs, their status, checkpoints and attempts, read from the store alone."""

import subprocess
import sys

import pytest
from launch_helpers import REPO, run_launch, small_overrides

from msca.runstate.lease import Holder, Lease
from msca.storage import open_store

pytestmark = pytest.mark.slow  # real processes: launch.py, ranks, or clusters

COMMON = [
    "cluster.procs_per_node=1",
    "train.epochs=1",
    "train.val_every=0",
    "eval.at_end=false",
    "data.batch_size=2",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=5",
]


def runs_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "msca.runs", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_ls_show_checkpoints(tmp_path):
    store = tmp_path / "store"
    assert (
        run_launch(small_overrides(tmp_path, tmp_path / "data", "done") + COMMON + ["train.max_steps=4"]).returncode
        == 0
    )
    failed = run_launch(
        small_overrides(tmp_path, tmp_path / "data", "broken") + COMMON,
        env={"MSCA_FAULT_INJECT": "committing checkpoint@0"},
    )
    assert failed.returncode not in (0, 3)
    # a torn step (no manifest) and an altered object in a committed one
    ckpts = store / "runs" / "done" / "checkpoints"
    (ckpts / "step_000000003").mkdir()
    (ckpts / "step_000000003" / "mp_rank_00_model_states.pt").write_bytes(b"half")
    shard = next((ckpts / "step_000000002").glob("mp_rank_00_model_states.pt"))
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    # a run whose job is alive holds a fresh lease
    (store / "runs" / "live").mkdir(parents=True)
    (store / "runs" / "live" / "config.yaml").write_text("{}")
    Lease(
        open_store(str(store / "runs" / "live")),
        Holder(job_key="slurm-77", attempt="a", host="node1", pid=1, backend="slurm"),
    ).acquire()

    ls = runs_cli("ls", str(store))
    assert ls.returncode == 0, ls.stderr
    lines = {line.split()[0]: line for line in ls.stdout.splitlines()[2:]}
    assert "finished" in lines["done"] and "4/4" in lines["done"] and "4 (verifies)" in lines["done"]
    assert "failed: CollectiveError: committing checkpoint step_000000002 failed on rank 0" in lines["broken"]
    assert "running (slurm slurm-77, lease renewed" in lines["live"]

    show = runs_cli("show", "done", "--store", str(store))
    assert show.returncode == 0, show.stderr
    assert "status: finished" in show.stdout and "goodput" in show.stdout and "badput: startup" in show.stdout

    cps = runs_cli("checkpoints", str(store / "runs" / "done"), "--deep")
    rows = {line.split()[0]: line for line in cps.stdout.splitlines()[2:]}
    assert "does not match its manifest checksum" in rows["2"] and "complete" in rows["4"]
    assert "torn" in rows["3"]
    shallow = runs_cli("checkpoints", str(store / "runs" / "done"))  # sizes only: the flip is not seen
    assert "complete" in {line.split()[0]: line for line in shallow.stdout.splitlines()[2:]}["2"]
    from msca.runstate.attempts import read_attempts, summarize

    s = summarize(read_attempts(open_store(str(store / "runs" / "done"))))
    assert 0.0 < s["goodput"] < 1.0 and s["goodput"] + sum(s["badput"].values()) == pytest.approx(1.0, abs=0.01)
