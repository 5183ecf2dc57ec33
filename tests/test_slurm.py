"""`launch.py cluster=slurm` on a real two-node SLURM (tests/slurm_cluster.py): a run spans node1 and node2; a
USR2 mid-run commits a checkpoint at that step, requeues, resumes from it and ends bit-identical to a run that
never stopped; a dead rank ends the job fast; bad requests fail before anything is written."""

import io
import json
import re
import subprocess
import time

import pytest
import torch
from launch_helpers import metrics, run_launch, small_overrides

pytestmark = pytest.mark.slow  # real processes: launch.py, ranks, or clusters

# 6 videos x 4 classes = 24 clips / 2 ranks / batch 2 -> 6 steps per epoch, 60 in all
TWO_NODES = ["cluster=slurm", "cluster.nodes=2", "cluster.tasks_per_node=1", "cluster.cpus_per_task=1"]
COMMON = TWO_NODES + [
    "deepspeed=zero2",
    "train.epochs=10",
    "train.val_every=0",
    "eval.at_end=false",
    "data.batch_size=2",
    "checkpoint.every_steps=4",
    "model.drop_path_rate=0.2",
]
TOTAL = 60
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def weights(home):
    return torch.load(io.BytesIO((home / "model.pt").read_bytes()), weights_only=True)


def job_id(stdout: str) -> str:
    return re.search(r"slurm: job (\d+)", stdout).group(1)


def assert_same_weights(tmp, home):
    ref, got = weights(tmp / "store" / "runs" / "full"), weights(home)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def start(tmp, name, slurm_cluster, at_step=3, extra=()):
    """Launch a run that returns at once; wait until it has trained `at_step` steps; its job id and args."""
    overrides = small_overrides(tmp, tmp / "data", name) + COMMON + list(extra)
    proc = run_launch(overrides, env=slurm_cluster.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_step(tmp / "store", name, at_step)
    return job_id(proc.stdout), overrides


def wait_state(cluster, jid: str, states=ENDED, timeout: float = 240) -> tuple[str, float]:
    """Poll sacct (exact, from slurmdbd) until the job's state is one of `states`; (state, when)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = cluster.run("sacct", "-n", "-X", "-P", "-j", jid, "-o", "State", check=False).stdout.split()
        if out and out[0].startswith(states):
            return out[0], time.time()
        time.sleep(0.2)
    raise TimeoutError(f"job {jid} not in {states} after {timeout}s: {out}")


def wait_step(store, name, step: int, timeout: float = 180) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = store / "runs" / name / "metrics.jsonl"
        if path.exists():
            steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if '"train"' in line]
            if steps and steps[-1] >= step:
                return steps[-1]
        time.sleep(0.05)
    raise TimeoutError(f"run {name} did not reach step {step}")


def logs(home, jid) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((home / "slurm").glob(f"{jid}_*_log.out")))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, slurm_cluster):
    """An uninterrupted two-node run (cluster.wait=true): the bit-exact reference for the stopped runs."""
    tmp = tmp_path_factory.mktemp("slurm")
    t0 = time.time()
    proc = run_launch(
        small_overrides(tmp, tmp / "data", "full") + COMMON + ["cluster.wait=true"], env=slurm_cluster.env
    )
    return tmp, proc, time.time() - t0


def test_two_node_run_completes_on_both_hosts(reference):
    tmp, proc, seconds = reference
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "COMPLETED" in proc.stdout
    home = tmp / "store" / "runs" / "full"
    jid = job_id(proc.stdout)
    assert "hostname=node1" in (home / "slurm" / f"{jid}_0_log.out").read_text()  # rank 0's task log
    assert "hostname=node2" in (home / "slurm" / f"{jid}_1_log.out").read_text()  # rank 1's
    assert "2 rank(s) on node1 (rank 0), node2 (rank 1); rendezvous node1:" in logs(home, jid)
    assert [m["step"] for m in metrics(tmp / "store", "full") if m["kind"] == "train"] == list(range(1, TOTAL + 1))
    assert (home / "model.pt").exists()
    print(f"two-node run: {seconds:.1f}s from launch to COMPLETED")


def test_usr2_commits_requeues_and_resumes_bit_identically(reference, slurm_cluster):
    tmp, full, _ = reference
    assert full.returncode == 0, full.stdout + full.stderr
    overrides = small_overrides(tmp, tmp / "data", "usr2") + COMMON
    proc = run_launch(overrides, env=slurm_cluster.env)  # returns at once
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jid = job_id(proc.stdout)
    assert f"scancel --signal=USR2 {jid}" in proc.stdout and "tail -f" in proc.stdout
    wait_step(tmp / "store", "usr2", 3)
    t_signal = time.time()
    slurm_cluster.run("scancel", "--signal=USR2", jid)
    state, t_end = wait_state(slurm_cluster, jid)
    assert state == "COMPLETED"

    home = tmp / "store" / "runs" / "usr2"
    text = logs(home, jid)
    stop = int(re.search(r"stop requested \(SIGUSR2\): saving step (\d+)", text).group(1))
    assert 3 <= stop < TOTAL
    assert f"requeued job {jid} (restart 1 of at most 100) after the checkpoint at step {stop}" in text
    assert re.search(rf"resumed from \S+/step_{stop:09d} \(step {stop}\)", text), text[-3000:]
    assert "Restarts=1" in slurm_cluster.run("scontrol", "show", "job", jid).stdout
    steps = [m["step"] for m in metrics(tmp / "store", "usr2") if m["kind"] == "train"]
    assert steps == list(range(1, TOTAL + 1))  # no step lost or repeated across the requeue
    assert_same_weights(tmp, home)
    print(f"USR2 at step >= 3 -> stop at {stop} -> requeue -> COMPLETED: {t_end - t_signal:.1f}s")


def test_usr2_before_our_handlers_requeues_through_submitit_checkpoint(reference, slurm_cluster):
    """A signal while the task is still importing torch reaches submitit's own handler: it calls our
    checkpoint() (a fresh instance; nothing trained yet), requeues, and the job then runs to the end."""
    tmp, _, _ = reference
    proc = run_launch(small_overrides(tmp, tmp / "data", "early") + COMMON + ["train.epochs=2"], env=slurm_cluster.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jid = job_id(proc.stdout)
    log = tmp / "store" / "runs" / "early" / "slurm" / f"{jid}_0_log.out"
    deadline = time.time() + 120
    while not (log.exists() and "Loading pickle" in log.read_text()) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # submitit's handler is in; ours (after `import torch`, seconds away) is not
    slurm_cluster.run("scancel", "--signal=USR2", jid)
    state, _ = wait_state(slurm_cluster, jid)
    text = logs(tmp / "store" / "runs" / "early", jid)
    assert state == "COMPLETED", text[-3000:]
    assert "Calling checkpoint method." in text and f"Requeued job {jid}" in text
    assert "Restarts=1" in slurm_cluster.run("scontrol", "show", "job", jid).stdout


def test_scontrol_requeue_without_a_signal_resumes_exactly(reference, slurm_cluster):
    """An admin's (or the scheduler's) requeue: the tasks get SIGTERM, save at the next step if KillWait allows
    (else the newest periodic checkpoint is used), and the requeued job finishes bit-identically."""
    tmp, _, _ = reference
    jid, _ = start(tmp, "requeue", slurm_cluster)
    slurm_cluster.run("scontrol", "requeue", jid)
    state, _ = wait_state(slurm_cluster, jid)
    home = tmp / "store" / "runs" / "requeue"
    text = logs(home, jid)
    assert state == "COMPLETED", text[-3000:]
    assert "resumed from" in text and "Restarts=1" in slurm_cluster.run("scontrol", "show", "job", jid).stdout
    assert "requeued job" not in text  # we did not requeue it a second time
    assert_same_weights(tmp, home)


def test_preemption_by_a_higher_tier_job_saves_requeues_and_resumes_exactly(reference, slurm_cluster):
    """PreemptMode=REQUEUE with GraceTime: SLURM sends SIGTERM; the ranks save at the next step and rank 0
    requeues (a job that exits by itself in the grace period would end FAILED); the urgent job runs; ours
    resumes from the stop step and ends bit-identical."""
    tmp, _, _ = reference
    jid, _ = start(tmp, "preempted", slurm_cluster)
    urgent = slurm_cluster.run(
        "sbatch",
        "--parsable",
        "-p",
        "urgent",
        "-N2",
        "--exclusive",
        "-o",
        str(tmp / "urgent_%j.out"),
        "--wrap",
        "srun hostname",
    ).stdout.strip()
    assert wait_state(slurm_cluster, urgent)[0] == "COMPLETED"
    state, _ = wait_state(slurm_cluster, jid)
    home = tmp / "store" / "runs" / "preempted"
    text = logs(home, jid)
    assert state == "COMPLETED", text[-3000:]
    stop = int(re.search(r"stop requested \(SIGTERM\): saving step (\d+)", text).group(1))
    assert f"requeued job {jid} (restart 1 of at most 100) after the checkpoint at step {stop}" in text
    assert re.search(rf"resumed from \S+/step_{stop:09d} \(step {stop}\)", text), text[-3000:]
    assert_same_weights(tmp, home)


def test_scancel_saves_and_ends_without_requeue_and_a_relaunch_finishes_exactly(reference, slurm_cluster):
    """A user's scancel: SIGTERM, the ranks save, `scontrol requeue` refuses (the job is cancelled)."""
    tmp, _, _ = reference
    jid, overrides = start(tmp, "cancelled", slurm_cluster)
    slurm_cluster.run("scancel", jid)
    state, _ = wait_state(slurm_cluster, jid)
    home = tmp / "store" / "runs" / "cancelled"
    text = logs(home, jid)
    assert state == "CANCELLED" and "requeued job" not in text and "not requeued: the job is" in text, text[-3000:]
    again = run_launch(overrides + ["cluster.wait=true"], env=slurm_cluster.env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed from" in again.stdout
    assert_same_weights(tmp, home)


def test_a_killed_rank_ends_the_job_fast_and_a_relaunch_resumes(reference, slurm_cluster):
    tmp, _, _ = reference
    overrides = small_overrides(tmp, tmp / "data", "kill") + COMMON + ["train.epochs=40"]
    proc = run_launch(overrides, env=slurm_cluster.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jid = job_id(proc.stdout)
    wait_step(tmp / "store", "kill", 6)
    pids = subprocess.run(["ip", "netns", "pids", "msca-node2"], capture_output=True, text=True).stdout.split()
    task = [p for p in pids if "submitit.core._submit" in open(f"/proc/{p}/cmdline").read().replace("\0", " ")]
    assert len(task) == 1, task
    t_kill = time.time()
    subprocess.run(["kill", "-9", task[0]], check=True)
    state, t_end = wait_state(slurm_cluster, jid, timeout=120)
    assert state == "FAILED" and t_end - t_kill < 60
    assert "node2: task 1: Killed" in logs(tmp / "store" / "runs" / "kill", jid)
    again = run_launch(overrides + ["cluster.wait=true"], env=slurm_cluster.env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed from" in again.stdout
    print(f"kill -9 of node2's rank -> job FAILED after {t_end - t_kill:.1f}s")


def test_dry_run_prints_the_sbatch_script_and_writes_nothing(tmp_path, slurm_cluster):
    before = slurm_cluster.run("squeue", "-h", "-o", "%i").stdout
    proc = run_launch(
        small_overrides(tmp_path, tmp_path / "data", "dry") + TWO_NODES + ["cluster.dry_run=true"],
        env=slurm_cluster.env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for line in (
        "#!/bin/bash",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --signal=USR2@120",
        "--kill-on-bad-exit=1",
        "-m submitit.core._submit",
    ):
        assert line in proc.stdout
    assert list(tmp_path.iterdir()) == []  # no run home, no submitit folder, no data
    assert slurm_cluster.run("squeue", "-h", "-o", "%i").stdout == before


def test_unknown_partition_is_one_clear_error_and_no_run_home(tmp_path, slurm_cluster):
    proc = run_launch(
        small_overrides(tmp_path, tmp_path / "data", "bad") + TWO_NODES + ["cluster.partition=nope"],
        env=slurm_cluster.env,
        timeout=60,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "invalid partition" in errors[0].lower(), proc.stderr
    assert not (tmp_path / "store").exists()


def test_max_requeues_exhausted_stops_without_requeue(reference, slurm_cluster):
    tmp, _, _ = reference
    jid, _ = start(tmp, "norequeue", slurm_cluster, extra=["cluster.max_requeues=0"])
    slurm_cluster.run("scancel", "--signal=USR2", jid)
    state, _ = wait_state(slurm_cluster, jid)
    text = logs(tmp / "store" / "runs" / "norequeue", jid)
    assert state == "FAILED" and "not requeued: 0 requeues already (cluster.max_requeues=0)" in text, text[-3000:]
    assert "Restarts=0" in slurm_cluster.run("scontrol", "show", "job", jid).stdout


def test_unwritable_folder_is_one_clear_error_and_no_run_home(tmp_path, slurm_cluster):
    proc = run_launch(
        small_overrides(tmp_path, tmp_path / "data", "bad") + TWO_NODES + ["cluster.folder=/proc/x"],
        env=slurm_cluster.env,
        timeout=60,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cluster.folder: cannot write /proc/x/bad" in errors[0], proc.stderr
    assert not (tmp_path / "store").exists()


def test_a_two_node_run_resumes_on_one_node_with_the_same_optimisation(tmp_path, slurm_cluster):
    """Stopped at step 4 of 6 on two nodes (2 ranks), relaunched with cluster.nodes=1: the job says it converts
    the checkpoint, every epoch trains each clip once across both attempts, and the ledger shows 2 then 1 rank."""
    base = small_overrides(tmp_path, tmp_path / "data", "shrink") + [
        "cluster=slurm",
        "cluster.tasks_per_node=1",
        "cluster.cpus_per_task=1",
        "cluster.wait=true",
        "deepspeed=zero2",
        "train.epochs=2",
        "train.val_every=0",
        "eval.at_end=false",
        "data.batch_size=2",
        "train.global_batch=8",  # 24 clips -> 3 steps per epoch at any world size
        "checkpoint.every_steps=2",
    ]
    env = {**slurm_cluster.env, "MSCA_SAMPLE_TRACE": str(tmp_path / "trace")}
    first = run_launch(base + ["cluster.nodes=2", "train.max_steps=4"], env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    second = run_launch(base + ["cluster.nodes=1"], env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    home = tmp_path / "store" / "runs" / "shrink"
    said = "resuming step 4 written by 2 ranks (ZeRO-2) on 1 ranks (ZeRO-2): converting (universal checkpoint)"
    assert said in logs(home, job_id(second.stdout))
    epochs = {}
    for f in (tmp_path / "trace").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            record = json.loads(line)
            epochs.setdefault(record["epoch"], []).extend(record["index"])
    assert {e: sorted(v) for e, v in epochs.items()} == {0: list(range(24)), 1: list(range(24))}
    assert [m["step"] for m in metrics(tmp_path / "store", "shrink") if m["kind"] == "train"] == list(range(1, 7))
    from msca.runstate.attempts import read_attempts
    from msca.storage import open_store

    assert [a.world_size for a in read_attempts(open_store(str(home)))] == [2, 1]
