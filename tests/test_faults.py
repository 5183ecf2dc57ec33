"""Faults a run must survive or report honestly: a second launch of a running run, and an error on one rank
inside a collective section (save, commit, load), which must reach every rank at once, not after the
process group's 30-minute timeout."""
import json
import os
import subprocess
import sys
import time

import pytest

from launch_helpers import REPO, run_launch, small_overrides

COMMON = ["cluster.procs_per_node=2", "deepspeed=zero2", "train.epochs=2", "train.val_every=0", "eval.at_end=false",
          "data.batch_size=2", "checkpoint.every_steps=2"]


def test_second_launch_of_a_running_run_is_refused(tmp_path):
    overrides = small_overrides(tmp_path, tmp_path / "data", "twice") + COMMON + ["train.epochs=4"]
    home = tmp_path / "store" / "runs" / "twice"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, str(REPO / "launch.py"), *overrides], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (home / "lease.json").exists():
            assert time.time() < deadline and first.poll() is None, "the first launch never took the lease"
            time.sleep(0.05)
        second = run_launch(overrides)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2
    assert "is running: local job local-" in second.stderr and "Traceback" not in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert first.returncode == 0, out + err
    assert len(json.loads((home / "launch.json").read_text())) == 1  # the refused launch wrote nothing
    steps = [json.loads(line)["step"] for line in (home / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # one writer: no interleaved records


@pytest.mark.parametrize("section,first_steps", [("preparing checkpoint", 0), ("committing checkpoint", 0),
                                                  ("reading the manifest", 2)])
def test_error_on_rank_1_in_a_collective_section_reaches_every_rank(tmp_path, section, first_steps):
    overrides = small_overrides(tmp_path, tmp_path / "data", "fault") + COMMON
    if first_steps:  # something to load
        assert run_launch(overrides + [f"train.max_steps={first_steps}"]).returncode == 0
    t0 = time.time()
    proc = run_launch(overrides, env={"MSCA_FAULT_INJECT": f"{section}@1"}, timeout=120)
    elapsed = time.time() - t0
    assert proc.returncode not in (0, 3)
    # rank 0 (whose output is the launcher's) raised the agreed error itself: it was not left waiting
    assert f"failed on rank 1: RuntimeError: fault injected by MSCA_FAULT_INJECT={section}@1" in proc.stderr
    assert elapsed < 60, elapsed
    rank1 = (tmp_path / "store" / "runs" / "fault" / "logs" / "rank1.log").read_text()
    assert "fault injected" in rank1


def test_time_based_checkpoints(tmp_path):
    """checkpoint.every_minutes saves on rank 0's clock, agreed by every rank, with no step or epoch interval."""
    overrides = small_overrides(tmp_path, tmp_path / "data", "timed") + COMMON + [
        "checkpoint.every_steps=0", "checkpoint.every_epochs=0", "checkpoint.every_minutes=0.0001",
        "checkpoint.keep_last=10", "train.max_steps=4"]
    proc = run_launch(overrides)
    assert proc.returncode == 0, proc.stderr
    ckpts = tmp_path / "store" / "runs" / "timed" / "checkpoints"
    assert sorted(p.parent.name for p in ckpts.glob("*/MANIFEST.json")) == [f"step_00000000{i}" for i in (1, 2, 3, 4)]
