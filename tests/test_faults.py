"""Faults a run must survive or report honestly: a second launch of a running run, and an error on one rank
inside a collective section (save, commit, load), which must reach every rank at once, not after the
process group's 30-minute timeout."""

import json
import os
import subprocess
import sys
import time

import pytest
from launch_helpers import run_launch, small_overrides, start_launch

pytestmark = pytest.mark.slow  # real processes: launch.py, ranks, or clusters

COMMON = [
    "cluster.procs_per_node=2",
    "deepspeed=zero2",
    "train.epochs=2",
    "train.val_every=0",
    "eval.at_end=false",
    "data.batch_size=2",
    "checkpoint.every_steps=2",
]


def test_second_launch_of_a_running_run_is_refused(tmp_path):
    overrides = small_overrides(tmp_path, tmp_path / "data", "twice") + COMMON + ["train.epochs=4"]
    home = tmp_path / "store" / "runs" / "twice"
    first = start_launch(overrides)
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


@pytest.mark.parametrize(
    "section,first_steps", [("preparing checkpoint", 0), ("committing checkpoint", 0), ("reading the manifest", 2)]
)
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
    overrides = (
        small_overrides(tmp_path, tmp_path / "data", "timed")
        + COMMON
        + [
            "checkpoint.every_steps=0",
            "checkpoint.every_epochs=0",
            "checkpoint.every_minutes=0.0001",
            "checkpoint.keep_last=10",
            "train.max_steps=4",
        ]
    )
    proc = run_launch(overrides)
    assert proc.returncode == 0, proc.stderr
    ckpts = tmp_path / "store" / "runs" / "timed" / "checkpoints"
    assert sorted(p.parent.name for p in ckpts.glob("*/MANIFEST.json")) == [f"step_00000000{i}" for i in (1, 2, 3, 4)]


def test_a_corrupt_video_on_rank_1_is_the_story_the_launcher_tells(tmp_path):
    """Rank 1's first clip is unreadable (every frame corrupt, no bad data allowed): the launcher names rank 1
    and its BadDataError with the file, not rank 0's lost-peer error, and nobody prints a traceback."""
    from msca.data import SyntheticConfig
    from msca.data.lists import parse_list
    from msca.data.sampler import ResumableDistributedSampler
    from msca.data.synthetic import generate
    from msca.storage import open_store

    data = tmp_path / "data"
    generate(
        open_store(str(data)),
        SyntheticConfig(classes=4, videos_per_class=6, val_videos_per_class=2, frames=16, height=40, width=52),
    )
    records = parse_list((data / "trainValTest" / "train.txt").read_text()).records
    sampler = ResumableDistributedSampler(len(records), rank=1, world_size=2, seed=0, shuffle=True, drop_last=True)
    victim = records[int(sampler.rank_indices(0)[0])].path
    assert victim != records[0].path  # the launch's own data check reads the first video
    for frame in (data / victim).iterdir():
        frame.write_bytes(b"not a jpeg")
    overrides = small_overrides(tmp_path, data, "corrupt") + COMMON + ["train.max_steps=2", "data.max_bad_fraction=0"]
    proc = run_launch(overrides, timeout=180)
    assert proc.returncode not in (0, 2, 3)
    assert "rank 1 on" in proc.stdout and "failed first: BadDataError" in proc.stdout
    assert victim in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_sigterm_during_start_up_stops_cleanly(tmp_path):
    """A stop signal before the first step (model build, restore) ends the job as stopped, not killed by the
    signal; nothing needs saving, and the relaunch trains from the start."""
    import signal

    overrides = small_overrides(tmp_path, tmp_path / "data", "early") + COMMON + ["train.max_steps=2"]
    proc = start_launch(overrides)
    try:
        from test_resume import rank_pids

        pids = rank_pids(proc.pid, time.time() + 120)
        time.sleep(1.0)  # the ranks are importing / building: no step yet
        os.kill(pids[1], signal.SIGTERM)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, out + err
    assert "stopped" in out and "nothing to save" in err
    home = tmp_path / "store" / "runs" / "early"
    assert not list(home.glob("checkpoints/*/MANIFEST.json"))
    assert run_launch(overrides).returncode == 0


def test_ranks_that_ignore_the_stop_are_reported_killed_not_stopped():
    """The launcher's grace period runs out: the ranks are killed and the exit code says so (EXIT_KILLED),
    never the clean-stop code."""
    from msca.cluster.local import poll_until_done
    from msca.runtime.errors import EXIT_KILLED

    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    procs = [subprocess.Popen([sys.executable, "-c", stubborn]) for _ in range(2)]
    time.sleep(0.5)
    for p in procs:
        p.send_signal(15)  # what Ctrl-C makes the launcher do; they ignore it
    t0 = time.time()
    assert poll_until_done(procs, deadline=time.time() + 1.0) == EXIT_KILLED
    assert all(p.poll() is not None for p in procs) and time.time() - t0 < 30


def test_a_stop_interrupts_an_evaluation_between_batches():
    import torch

    from msca.runtime.preemption import EvaluationInterrupted
    from msca.training.evaluation import predict

    batches = [
        {"video": torch.zeros(1, 1, 2, 3, 8, 8), "label": torch.zeros(1, dtype=torch.long), "index": torch.tensor([i])}
        for i in range(5)
    ]
    seen = []

    def forward(x):  # (B*V, T, 3, H, W) -> (B*V, K)
        seen.append(1)
        return torch.zeros(x.shape[0], 4)

    asked = iter([0, 0, 15, 15, 15])
    with pytest.raises(EvaluationInterrupted):
        predict(forward, batches, torch.device("cpu"), stop=lambda: next(asked))
    assert len(seen) == 2  # stopped before the third batch


def test_a_rank_whose_interpreter_teardown_aborts_still_ends_a_clean_run(tmp_path):
    """Clean 2-rank runs have died after their last commit with "terminate called without an active exception"
    (exit -6) in the interpreter's teardown, and were reported failed. A rank now releases its process groups in
    order, records how its job ended and exits without that teardown; this rank 1 would abort in it."""
    overrides = small_overrides(tmp_path, tmp_path / "data", "teardown") + COMMON + ["train.max_steps=3"]
    proc = run_launch(overrides, env={"MSCA_FAULT_INJECT": "teardown@1"}, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "failed" not in out and "warning: rank" not in out  # the teardown never ran: nothing to forgive
    home = tmp_path / "store" / "runs" / "teardown"
    assert (home / "model.pt").exists()
    assert [json.loads((home / "logs" / f"rank{r}.end.json").read_text()) for r in (0, 1)] == [{"code": 0}] * 2


def test_a_signal_after_a_recorded_clean_end_is_not_a_failure(tmp_path):
    """Whatever still kills a rank after it recorded a clean end (a library's teardown, a late signal) does not
    fail the launch, and the other ranks are not stopped: rank 0 may still be writing its last records."""
    from msca.cluster.local import poll_until_done

    ends_then_aborts = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps({'code': 0})); os.abort()"
    still_writing = "import time; time.sleep(3)"
    procs = [
        subprocess.Popen([sys.executable, "-c", still_writing]),
        subprocess.Popen([sys.executable, "-c", ends_then_aborts, str(tmp_path / "rank1.end.json")]),
    ]
    assert poll_until_done(procs, deadline=time.time() + 60, log_dir=tmp_path) == 0
    assert procs[0].returncode == 0  # not terminated by the launcher

    no_record = subprocess.Popen([sys.executable, "-c", "import os; os.abort()"])
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert poll_until_done([sleeper, no_record], deadline=time.time() + 60, log_dir=tmp_path / "none") == -6
    assert sleeper.returncode is not None  # a real failure still stops the others
