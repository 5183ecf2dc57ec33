"""`python launch.py` end to end: real processes, real DeepSpeed engines on gloo, the real data pipeline."""
import json

import pytest

from launch_helpers import metrics, run_launch, small_overrides


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "synthetic"


@pytest.mark.parametrize("deepspeed", ["zero0", "zero2_bf16", "zero2", "zero0_bf16"])
def test_two_rank_deepspeed_training_learns(tmp_path, data_root, deepspeed):
    name = f"ds-{deepspeed}"
    overrides = small_overrides(tmp_path, data_root, name) + [
        f"deepspeed={deepspeed}", "cluster.procs_per_node=2", "train.epochs=4", "train.lr=3e-3",
        "train.warmup_epochs=0", "train.schedule=constant", "train.val_every=0", "eval.at_end=false",
    ]
    proc = run_launch(overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train = [m for m in metrics(tmp_path / "store", name) if m["kind"] == "train"]
    losses = [m["loss"] for m in train]
    assert len(losses) >= 8
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first, losses
    home = tmp_path / "store" / "runs" / name
    assert (home / "model.pt").exists() and (home / "config.yaml").exists()


def test_default_job_end_to_end_with_eval_and_relaunch_rules(tmp_path, data_root):
    name = "smoke"
    base = small_overrides(tmp_path, data_root, name) + ["train.epochs=2", "eval.plots=true"]
    proc = run_launch(base)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    home = tmp_path / "store" / "runs" / name
    res = json.loads((home / "results.json").read_text())
    assert res["num_videos"] == 8 and 0.0 <= res["top1"] <= 1.0 and res["top5"] == 1.0  # 4 classes: top-5 is all
    assert (home / "confusion.png").stat().st_size > 0 and (home / "curves.png").stat().st_size > 0
    val = [m for m in metrics(tmp_path / "store", name) if m["kind"] == "val"]
    assert [v["epoch"] for v in val] == [1, 2]
    assert "top-1" in proc.stdout and str(home) in proc.stdout
    launches = json.loads((home / "launch.json").read_text())
    assert len(launches) == 1 and launches[0]["resumed"] is False

    # A different config for an existing name is refused, naming the key; nothing is overwritten.
    before = (home / "config.yaml").read_text()
    proc = run_launch(base + ["train.lr=0.5"])
    assert proc.returncode == 2
    assert "train.lr" in proc.stderr and "allow_config_change" in proc.stderr
    assert (home / "config.yaml").read_text() == before

    # Re-launching the same name resumes: the finished run is not trained again.
    proc = run_launch(base)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train_steps = [m["step"] for m in metrics(tmp_path / "store", name) if m["kind"] == "train"]
    assert train_steps == sorted(set(train_steps)), "steps were trained twice"
    assert json.loads((home / "launch.json").read_text())[-1]["resumed"] is True


@pytest.mark.parametrize("override,needle", [
    ("train.lrr=1", "lrr"),
    ("deepspeed.precision=fp8", "deepspeed.precision"),
    ("model=nope", "nope"),
])
def test_bad_override_is_a_short_error(tmp_path, override, needle):
    proc = run_launch([f"store.root={tmp_path}", override], timeout=60)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
