"""Re-launching a run resumes it from its newest committed checkpoint, exactly: a run stopped mid-epoch and
relaunched ends with bit-identical weights to one that never stopped (2 ranks, ZeRO 2, gloo)."""
import io
import json

import pytest
import torch

from launch_helpers import metrics, run_launch, small_overrides


def weights(home):
    return torch.load(io.BytesIO((home / "model.pt").read_bytes()), weights_only=True)


@pytest.mark.parametrize("deepspeed", ["zero2"])
def test_stopped_and_relaunched_run_equals_uninterrupted(tmp_path, deepspeed):
    data_root = tmp_path / "data"
    common = ["cluster.procs_per_node=2", f"deepspeed={deepspeed}", "train.epochs=3", "train.val_every=0",
              "eval.at_end=false", "data.batch_size=2", "checkpoint.every_steps=2"]
    # 6 videos x 4 classes = 24 clips / 2 ranks / batch 2 -> 6 steps per epoch; stop at 8 = mid-epoch 2
    full = run_launch(small_overrides(tmp_path, data_root, "full") + common + ["train.max_steps=14"])
    assert full.returncode == 0, full.stderr
    part = run_launch(small_overrides(tmp_path, data_root, "part") + common + ["train.max_steps=8"])
    assert part.returncode == 0, part.stderr
    home = tmp_path / "store" / "runs" / "part"
    manifest = json.loads((home / "checkpoints" / "step_000000008" / "MANIFEST.json").read_text())
    assert manifest["trainer"] == {"epoch": 1, "position": 4, "step": 8}
    resumed = run_launch(small_overrides(tmp_path, data_root, "part") + common + ["train.max_steps=14"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr

    a, b = weights(tmp_path / "store" / "runs" / "full"), weights(home)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [m["step"] for m in metrics(tmp_path / "store", "part") if m["kind"] == "train"]
    assert steps == list(range(1, 15))
    # retention: keep_last=2 committed checkpoints
    steps_kept = sorted(p.name for p in (home / "checkpoints").glob("step_*"))
    assert steps_kept == ["step_000000012", "step_000000014"]


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
