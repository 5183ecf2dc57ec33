"""The bad-data threshold is the run's, not a rank's (issue 19): two unreadable videos, one in each rank's first
batch, are each within `max_bad_fraction` for the rank that loads it, and past it for the run. Real launch.py,
two real gloo ranks, real corrupt JPEG files."""

import pytest
from launch_helpers import run_launch, small_overrides

from msca.data.sampler import epoch_permutation

pytestmark = pytest.mark.slow  # real processes: launch.py and its ranks

COMMON = ["cluster.procs_per_node=2", "deepspeed=zero2", "eval.at_end=false", "train.val_every=0"]


def test_bad_videos_on_two_ranks_add_up_to_the_runs_threshold(tmp_path):
    data = tmp_path / "data"
    made = run_launch(small_overrides(tmp_path, data, "gen") + COMMON + ["train.max_steps=1"])
    assert made.returncode == 0, made.stderr[-3000:]  # the synthetic Kinetics-format tree, 24 train videos
    videos = [line.split(",")[0] for line in (data / "trainValTest" / "train.txt").read_text().splitlines()]
    order = epoch_permutation(len(videos), 0, 0)  # the epoch's global order (seed 0): rank r gets order[r::2]
    for j in order[:2]:  # one unreadable video in each rank's first batch
        for frame in (data / videos[j]).iterdir():
            frame.write_bytes(b"not a jpeg")
    # 2 of 24 videos: 1/24 per rank is within 0.06 (1.44 videos), 2/24 for the run is past it
    proc = run_launch(small_overrides(tmp_path, data, "bad") + COMMON + ["data.max_bad_fraction=0.06"])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "2 of 24 videos have missing/corrupt frames over all 2 ranks" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for j in order[:2]:  # each rank's log named its own file
        assert videos[j] in out, out[-3000:]
