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
