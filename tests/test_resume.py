"""Re-launching a run resumes it from its newest committed checkpoint, exactly: a run stopped mid-epoch (by
max_steps, or by Ctrl-C / SIGTERM) and relaunched ends with bit-identical weights to one that never stopped
(2 ranks, ZeRO 2, gloo, with stochastic depth so the per-rank RNG streams matter)."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from launch_helpers import REPO, metrics, run_launch, small_overrides

# 6 videos x 4 classes = 24 clips / 2 ranks / batch 2 -> 6 optimizer steps per epoch, 30 in all
COMMON = ["cluster.procs_per_node=2", "deepspeed=zero2", "train.epochs=5", "train.val_every=2", "eval.at_end=false",
          "data.batch_size=2", "checkpoint.every_steps=2",
          "model.drop_path_rate=0.2"]  # stochastic depth: exactness needs every rank's RNG stream restored


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
    assert manifest["trainer"] == {"epoch": 1, "position": 4, "step": 8}
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
    overrides = small_overrides(tmp, tmp / "data", "sig") + COMMON + ["checkpoint.every_steps=0",
                                                                        "checkpoint.every_epochs=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), *overrides], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
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
    common = [f"store.root={root}", "cluster.procs_per_node=2", "deepspeed=zero1", "train.epochs=2",
              "train.val_every=0", "data.batch_size=2", "checkpoint.every_steps=3"]
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

    import shutil
    shutil.rmtree(tmp_path / "cache")  # nothing local survives: the resume must come from S3
    second = run_launch(base + common + ["train.max_steps=6"], env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed from s3://" in second.stderr
    steps = [json.loads(line)["step"] for line in store.read_text("metrics.jsonl").splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps[-3:] == [4, 5, 6]
    assert store.exists("model.pt") and json.loads(store.read_text("results.json"))["num_videos"] == 8
    assert store.exists("checkpoints/step_000000006/MANIFEST.json")


def test_torn_checkpoints_are_skipped_with_a_warning(runs, caplog):
    """A step without a manifest does not exist; a step whose objects do not match it is skipped; the newest
    complete one is chosen (the full run keeps steps 28 and 30)."""
    from msca.checkpoint import CheckpointManager
    from msca.run_home import RunHome

    import shutil

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
