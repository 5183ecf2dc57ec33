"""Re-launching a run resumes it from its newest committed checkpoint, exactly: a run stopped mid-epoch (by
max_steps, or by Ctrl-C / SIGTERM) and relaunched ends with bit-identical weights to one that never stopped
(2 ranks, ZeRO 2, gloo, with stochastic depth so the per-rank RNG streams matter)."""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from launch_helpers import metrics, run_launch, small_overrides, start_launch

from msca.runstate.attempts import read_attempts
from msca.runstate.metrics import read_metrics

pytestmark = pytest.mark.slow  # real processes: launch.py, ranks, or clusters

# 6 videos x 4 classes = 24 clips / 2 ranks / batch 2 -> 6 optimizer steps per epoch, 30 in all
COMMON = [
    "cluster.procs_per_node=2",
    "deepspeed=zero2",
    "train.epochs=5",
    "train.val_every=2",
    "eval.at_end=false",
    "data.batch_size=2",
    "checkpoint.every_steps=2",
    "model.drop_path_rate=0.2",
]  # stochastic depth: exactness needs every rank's RNG stream restored


def weights(home):
    return torch.load(io.BytesIO((home / "model.pt").read_bytes()), weights_only=True)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Shared data and an uninterrupted reference run."""
    tmp = tmp_path_factory.mktemp("resume")
    full = run_launch(small_overrides(tmp, tmp / "data", "full") + COMMON)
    assert full.returncode == 0, full.stderr
    return tmp, weights(tmp / "store" / "runs" / "full")


def test_stopped_and_relaunched_run_equals_uninterrupted(runs):
    tmp, reference = runs
    part = run_launch(small_overrides(tmp, tmp / "data", "part") + COMMON + ["train.max_steps=8"])
    assert part.returncode == 0, part.stderr
    home = tmp / "store" / "runs" / "part"
    manifest = json.loads((home / "checkpoints" / "step_000000008" / "MANIFEST.json").read_text())
    # global units: 8 clips of epoch 1 consumed by both ranks together, 4 clips per optimizer step
    assert manifest["trainer"] == {"epoch": 1, "samples": 8, "step": 8, "global_batch": 4}
    resumed = run_launch(small_overrides(tmp, tmp / "data", "part") + COMMON)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr

    assert_same_weights(reference, weights(home))
    steps = [m["step"] for m in metrics(tmp / "store", "part") if m["kind"] == "train"]
    assert steps == list(range(1, 31))
    steps_kept = sorted(p.name for p in (home / "checkpoints").glob("step_*"))  # retention: keep_last=2
    assert steps_kept == ["step_000000028", "step_000000030"]


def test_ctrl_c_saves_at_the_next_step_and_the_relaunch_finishes_exactly(runs):
    tmp, reference = runs
    overrides = (
        small_overrides(tmp, tmp / "data", "sig") + COMMON + ["checkpoint.every_steps=0", "checkpoint.every_epochs=0"]
    )
    proc = start_launch(overrides, start_new_session=True)
    path = tmp / "store" / "runs" / "sig" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (path.exists() and path.read_text().strip()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does to the launcher
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, out + err
    assert "stopped" in out and "stop requested (SIGTERM)" in err
    home = tmp / "store" / "runs" / "sig"
    committed = sorted(p.name for p in (home / "checkpoints").glob("step_*/MANIFEST.json"))
    assert len(committed) == 1 and committed[0] != "step_000000030"  # saved on the stop, mid-run

    resumed = run_launch(overrides)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(reference, weights(home))


def test_run_home_in_s3_checkpoints_and_resumes_there(tmp_path, s3_server):
    """store.root=s3://...: config, checkpoints (manifest last), metrics, weights and results land in a real S3
    server (SeaweedFS); a relaunch resumes from the S3 checkpoint, not from local files."""
    bucket = s3_server.make_bucket()
    root = f"s3://{bucket}/team"
    common = [
        f"store.root={root}",
        "cluster.procs_per_node=2",
        "deepspeed=zero1",
        "train.epochs=2",
        "train.val_every=0",
        "data.batch_size=2",
        "checkpoint.every_steps=3",
    ]
    base = [o for o in small_overrides(tmp_path, tmp_path / "data", "s3run") if not o.startswith("store.root=")]
    env = {**s3_server.env, "MSCA_CACHE": str(tmp_path / "cache")}
    first = run_launch(base + common + ["train.max_steps=3", "eval.at_end=false"], env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    store = s3_server.store(f"{root}/runs/s3run")
    manifest = json.loads(store.read_text("checkpoints/step_000000003/MANIFEST.json"))
    keys = {o["key"] for o in manifest["objects"]}
    assert any("optim_states" in k for k in keys) and any("model_states" in k for k in keys)
    for obj in manifest["objects"]:
        assert store.size(f"checkpoints/{obj['key']}") == obj["size"]

    shutil.rmtree(tmp_path / "cache")  # nothing local survives: the resume must come from S3
    second = run_launch(base + common + ["train.max_steps=6"], env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed from s3://" in second.stderr
    assert train_steps(store) == [1, 2, 3, 4, 5, 6]  # the history of the first machine is kept, once
    assert store.exists("model.pt") and json.loads(store.read_text("results.json"))["num_videos"] == 8
    assert store.exists("checkpoints/step_000000006/MANIFEST.json")
    assert [(a.restored_step, a.last_step, a.end_reason, a.world_size) for a in read_attempts(store)] == [
        (0, 3, "finished", 2),
        (3, 6, "finished", 2),
    ]
    assert not store.exists("lease.json")  # released at the end

    # an object of the newest commit vanishes: every rank falls back to step 3 together, the run completes
    manifest = json.loads(store.read_text("checkpoints/step_000000006/MANIFEST.json"))
    lost = next(o["key"] for o in manifest["objects"] if "zero_pp_rank_1_" in o["key"])  # rank 1's own shard
    store.delete(f"checkpoints/{lost}")
    shutil.rmtree(tmp_path / "cache")
    third = run_launch(base + common + ["train.max_steps=9", "eval.at_end=false"], env=env)
    assert third.returncode == 0, third.stdout + third.stderr
    assert f"{lost} is missing" in third.stderr and "falling back" in third.stderr
    assert "(step 3)" in third.stderr
    assert train_steps(store) == list(range(1, 10))  # steps 4-6 recomputed, recorded once
    assert [a.restored_step for a in read_attempts(store)] == [0, 3, 3]


def train_steps(store) -> list[int]:
    return [r["step"] for r in read_metrics(store) if r["kind"] == "train"]


def test_torn_checkpoints_are_skipped_with_a_warning(runs, caplog):
    """A step without a manifest does not exist; a step whose objects do not match it is skipped; the newest
    complete one is chosen (the full run keeps steps 28 and 30)."""
    from msca.runstate.checkpoint import CheckpointManager
    from msca.runstate.home import RunHome

    tmp, _ = runs
    root = tmp / "store" / "runs" / "torn"  # a copy: the reference run stays intact for other tests
    shutil.copytree(tmp / "store" / "runs" / "full" / "checkpoints", root / "checkpoints")
    home = RunHome(str(root))
    ckpt = CheckpointManager(engine=None, home=home)
    assert ckpt.committed_steps() == [28, 30] and ckpt.newest_complete()["step"] == 30

    torn = root / "checkpoints" / "step_000000099"
    torn.mkdir()
    (torn / "mp_rank_00_model_states.pt").write_bytes(b"half a save")  # no manifest: never committed
    assert ckpt.committed_steps() == [28, 30]

    manifest = json.loads((root / "checkpoints" / "step_000000030" / "MANIFEST.json").read_text())
    victim = root / "checkpoints" / manifest["objects"][0]["key"]
    victim.write_bytes(victim.read_bytes()[:-10])  # truncated upload
    with caplog.at_level("WARNING"):
        assert ckpt.newest_complete()["step"] == 28
    assert "step_000000030" in caplog.text and "truncated" in caplog.text


def test_altered_shard_of_the_newest_commit_falls_back_and_finishes_exactly(runs):
    """One byte flipped in rank 1's optimizer shard of the newest commit (same size, so only the checksum can
    tell): every rank agrees to resume from the previous commit, the warning names the object, and the run
    still ends bit-identical to one that was never interrupted, with every step recorded once."""
    tmp, reference = runs
    overrides = small_overrides(tmp, tmp / "data", "altered") + COMMON
    part = run_launch(overrides + ["train.max_steps=8"])
    assert part.returncode == 0, part.stderr
    home = tmp / "store" / "runs" / "altered"
    manifest = json.loads((home / "checkpoints" / "step_000000008" / "MANIFEST.json").read_text())
    key = next(o["key"] for o in manifest["objects"] if "zero_pp_rank_1_" in o["key"])
    victim = home / "checkpoints" / key
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))

    resumed = run_launch(overrides)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{key} does not match its manifest checksum" in resumed.stderr and "falling back" in resumed.stderr
    assert "(step 6)" in resumed.stderr
    assert_same_weights(reference, weights(home))
    assert [m["step"] for m in metrics(tmp / "store", "altered") if m["kind"] == "train"] == list(range(1, 31))


def rank_pids(launcher_pid: int, deadline: float) -> dict:
    """{rank: pid} of a local launch's rank processes (read from their environment)."""
    while time.time() < deadline:
        out = {}
        for pid in subprocess.run(["pgrep", "-P", str(launcher_pid)], capture_output=True, text=True).stdout.split():
            try:
                env = dict(kv.split("=", 1) for kv in open(f"/proc/{pid}/environ").read().split("\0") if "=" in kv)
            except OSError:
                continue
            if "RANK" in env:
                out[int(env["RANK"])] = int(pid)
        if len(out) == 2:
            return out
        time.sleep(0.05)
    raise AssertionError("rank processes not found")


@pytest.mark.parametrize("victim", [1, 0])
def test_rank_killed_while_a_checkpoint_uploads(runs, s3_server, tmp_path, victim):
    """kill -9 of one rank while a checkpoint's upload is in flight (the S3 server paused, so it cannot
    finish): that step is never committed, the relaunch resumes from the previous commit and the run ends
    bit-identical to an uninterrupted one, each step recorded once."""
    tmp, reference = runs
    bucket = s3_server.make_bucket()
    name = f"kill{victim}"
    overrides = (
        [o for o in small_overrides(tmp, tmp / "data", name) if not o.startswith("store.root=")]
        + COMMON
        + [f"store.root=s3://{bucket}/team", f"checkpoint.staging_dir={tmp_path / 'scratch'}"]
    )
    store = s3_server.store(f"s3://{bucket}/team/runs/{name}")
    proc = start_launch(overrides, env={**s3_server.env, "MSCA_CACHE": str(tmp_path / "cache")})
    try:
        deadline = time.time() + 180
        pids = rank_pids(proc.pid, deadline)
        staging = tmp_path / "scratch" / f"msca-{os.getuid()}" / "staging"
        while not list(staging.glob("*/step_000000006")):  # node-local: polled without touching S3
            assert time.time() < deadline and proc.poll() is None, "step 6 was never staged"
            time.sleep(0.001)
        os.kill(s3_server.pid, signal.SIGSTOP)  # step 6 is being written: its upload cannot finish
        time.sleep(0.5)
        os.kill(pids[victim], signal.SIGKILL)
        time.sleep(2.0)  # the launcher notices and stops the other rank while the upload is still stuck
    finally:
        os.kill(s3_server.pid, signal.SIGCONT)
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode not in (0, 3)
    assert store.exists("checkpoints/step_000000004/MANIFEST.json")
    assert not store.exists("checkpoints/step_000000006/MANIFEST.json")

    resumed = run_launch(overrides, env={**s3_server.env, "MSCA_CACHE": str(tmp_path / "cache2")})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "(step 4)" in resumed.stderr
    assert_same_weights(reference, torch.load(io.BytesIO(store.read_bytes("model.pt")), weights_only=True))
    assert [r["step"] for r in read_metrics(store) if r["kind"] == "train"] == list(range(1, 31))
    attempts = read_attempts(store)
    # rank 0 killed: the attempt vanished (no end); rank 1 killed: rank 0 recorded the failure
    assert [a.restored_step for a in attempts] == [0, 4]
    assert attempts[0].end_reason == (None if victim == 0 else "failed")
    assert attempts[0].last_committed_step == 4 and attempts[1].end_reason == "finished"


def test_s3_server_paused_for_30s_mid_run_costs_a_pause_not_the_run(runs, s3_server, tmp_path):
    """SIGSTOP of the S3 server for 30 s while the run checkpoints and syncs metrics to it: transfers wait and
    retry, the run completes with the weights of an uninterrupted run and every step recorded once."""
    tmp, reference = runs
    bucket = s3_server.make_bucket()
    overrides = (
        [o for o in small_overrides(tmp, tmp / "data", "paused") if not o.startswith("store.root=")]
        + COMMON
        + [f"store.root=s3://{bucket}/team"]
    )
    store = s3_server.store(f"s3://{bucket}/team/runs/paused")
    proc = start_launch(overrides, env={**s3_server.env, "MSCA_CACHE": str(tmp_path / "cache")})
    try:
        deadline = time.time() + 180
        while not store.exists("checkpoints/step_000000004/MANIFEST.json"):
            assert time.time() < deadline and proc.poll() is None, "step 4 was never committed"
            time.sleep(0.05)
        os.kill(s3_server.pid, signal.SIGSTOP)
        time.sleep(30)
    finally:
        os.kill(s3_server.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert "retrying for up to" in err  # the pause was noticed and ridden through
    assert_same_weights(reference, torch.load(io.BytesIO(store.read_bytes("model.pt")), weights_only=True))
    assert [r["step"] for r in read_metrics(store) if r["kind"] == "train"] == list(range(1, 31))
    assert len(read_attempts(store)) == 1


@contextlib.contextmanager
def full_staging_disk(tmp_path):
    """A staging folder that cannot hold a checkpoint: a 16 KiB tmpfs (root may mount one), else a path under a
    regular file (ENOTDIR; root bypasses a chmod, not this)."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(tiny)], capture_output=True).returncode:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        yield blocker / "sub", "NotADirectoryError"
        return
    try:
        yield tiny, "No space left on device"
    finally:
        subprocess.run(["umount", "-l", str(tiny)], check=True)


def checkpoint_objects(store) -> dict:
    return {k: store.size(f"checkpoints/{k}") for k in store.child("checkpoints").list("")}


def test_a_restore_that_cannot_stage_ends_in_one_line_and_changes_nothing(tmp_path, s3_server):
    """A relaunch whose staging disk is full (not the checkpoint's fault) does not fall back and does not start
    from scratch: it ends with one line naming the cause and the store, the store's metric history and commits
    stay exactly as they were, and a later relaunch resumes from the newest commit with every step once."""
    bucket = s3_server.make_bucket()
    base = [o for o in small_overrides(tmp_path, tmp_path / "data", "full-disk") if not o.startswith("store.root=")]
    common = base + [
        f"store.root=s3://{bucket}/team",
        "cluster.procs_per_node=2",
        "deepspeed=zero1",
        "train.epochs=2",
        "train.val_every=0",
        "eval.at_end=false",
        "data.batch_size=2",
        "checkpoint.every_steps=3",
    ]
    env = {**s3_server.env, "MSCA_CACHE": str(tmp_path / "cache")}
    scratch = f"checkpoint.staging_dir={tmp_path / 'scratch'}"
    first = run_launch(common + [scratch, "train.max_steps=6"], env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    store = s3_server.store(f"s3://{bucket}/team/runs/full-disk")
    metrics_before, objects_before = store.read_text("metrics.jsonl"), checkpoint_objects(store)
    assert {k for k in objects_before if k.endswith("MANIFEST.json")} == {
        "step_000000003/MANIFEST.json",
        "step_000000006/MANIFEST.json",
    }

    with full_staging_disk(tmp_path) as (staging, cause):
        failed = run_launch(common + [f"checkpoint.staging_dir={staging}", "train.max_steps=12"], env=env)
    out = failed.stdout + failed.stderr
    assert failed.returncode not in (0, 3), out
    assert "Traceback" not in out and "falling back" not in out and "starting from scratch" not in out
    assert cause in out and f"s3://{bucket}/team/runs/full-disk/checkpoints" in out
    if cause == "No space left on device":  # the restore itself hit it (not the staging folder's creation)
        assert "restoring step_000000006 into" in out and "not a fault of the checkpoint" in out
    assert store.read_text("metrics.jsonl") == metrics_before  # history not cut
    assert checkpoint_objects(store) == objects_before  # no retention, no re-save
    assert "resumed from" not in out

    resumed = run_launch(common + [scratch, "train.max_steps=12"], env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "(step 6)" in resumed.stderr
    assert train_steps(store) == list(range(1, 13))
    attempts = read_attempts(store)
    assert [(a.restored_step, a.end_reason) for a in attempts if a.end_reason != "failed"] == [
        (0, "finished"),
        (6, "finished"),
    ]


def test_crash_after_an_epoch_end_checkpoint_and_a_torn_metrics_line_leave_a_clean_history(tmp_path):
    """Step 6 ends epoch 1 and is saved inside the loop, before that epoch's validation logs `val` at step 6;
    the job then dies before its next commit (step 9), and power loss tears the last metrics line. The relaunch
    resumes from step 6, skips the torn line with a warning, runs epoch 1's validation again and the history
    has every train step and one `val` per epoch end, in a file where every line is a whole record."""
    overrides = small_overrides(tmp_path, tmp_path / "data", "valdup") + [
        "cluster.procs_per_node=2",
        "deepspeed=zero1",
        "train.epochs=2",
        "train.val_every=1",
        "eval.at_end=false",
        "data.batch_size=2",
        "checkpoint.every_steps=3",
    ]
    crashed = run_launch(overrides, env={"MSCA_FAULT_INJECT": "preparing checkpoint step_000000009@0"})
    assert crashed.returncode not in (0, 3), crashed.stdout + crashed.stderr
    home = tmp_path / "store" / "runs" / "valdup"
    assert sorted(p.parent.name for p in home.glob("checkpoints/*/MANIFEST.json"))[-1] == "step_000000006"
    before = metrics(tmp_path / "store", "valdup")
    assert [r["step"] for r in before if r["kind"] == "val"] == [6]  # logged after step 6's checkpoint
    with (home / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "step": 10, "ti')  # a write cut by power loss

    resumed = run_launch(overrides)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "(step 6)" in resumed.stderr
    assert "is not a whole record" in resumed.stderr
    history = metrics(tmp_path / "store", "valdup")  # json.loads of every line: the file was rewritten clean
    assert [r["step"] for r in history if r["kind"] == "train"] == list(range(1, 13))
    assert [(r["step"], r["epoch"]) for r in history if r["kind"] == "val"] == [(6, 1), (12, 2)]
