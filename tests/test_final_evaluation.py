"""The end-of-training test evaluates the trained engine itself: no model rebuilt, no pretrained file fetched
again, no temp folder left behind, and the numbers equal an evaluation of the saved model.pt."""

import json
import time

import pytest
from launch_helpers import run_launch, small_overrides, start_launch

pytestmark = pytest.mark.slow  # real processes: launch.py and its ranks

COMMON = [
    "cluster.procs_per_node=2",
    "deepspeed=zero2",
    "train.epochs=3",
    "train.val_every=0",
    "data.batch_size=2",
    "checkpoint.every_steps=0",
]


def test_train_job_evaluates_its_engine_without_fetching_the_pretrained_file_again(tmp_path, s3_server):
    data, store = tmp_path / "data", tmp_path / "store"
    seed = run_launch(small_overrides(tmp_path, data, "seed") + COMMON + ["train.max_steps=1", "eval.at_end=false"])
    assert seed.returncode == 0, seed.stderr
    bucket = s3_server.make_bucket()
    weights = s3_server.store(f"s3://{bucket}/weights")
    weights.write_bytes("tiny.pt", (store / "runs" / "seed" / "model.pt").read_bytes())

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {**s3_server.env, "TMPDIR": str(tmpdir)}
    overrides = small_overrides(tmp_path, data, "tested") + COMMON + [f"model.pretrained=s3://{bucket}/weights/tiny.pt"]
    proc = start_launch(overrides, env=env, start_new_session=True)
    home = store / "runs" / "tested"
    deadline = time.time() + 180
    while not ((home / "metrics.jsonl").exists() and (home / "metrics.jsonl").read_text().strip()):
        assert time.time() < deadline and proc.poll() is None, "training never started"
        time.sleep(0.02)
    weights.delete("tiny.pt")  # every rank has loaded it: from here on, a fetch of it fails
    assert not (home / "results.json").exists(), "the run finished before the pretrained file was removed"
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert not list(tmpdir.rglob("msca-fetch-*"))  # the start's downloads were removed after loading
    trained = json.loads((home / "results.json").read_text())

    again = run_launch(small_overrides(tmp_path, data, "tested") + COMMON + ["run.job=evaluate"], env=env)
    assert again.returncode == 0, again.stdout + again.stderr  # model.pt alone: no pretrained file needed
    saved = json.loads((home / "results.json").read_text())
    assert trained["num_videos"] == saved["num_videos"] == 8
    assert trained["top1"] == pytest.approx(saved["top1"], abs=1e-6)
    assert trained["top5"] == pytest.approx(saved["top5"], abs=1e-6)
    assert trained["confusion"] == saved["confusion"]
    assert not list(tmpdir.rglob("msca-fetch-*"))
