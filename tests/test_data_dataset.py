"""Dataset, sampler and loader: shapes, determinism in (seed, epoch, index), resume, and bad input."""

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from msca.data import (
    BadDataError,
    DataConfig,
    ListFormatError,
    ResumableDistributedSampler,
    SyntheticConfig,
    build_dataset,
    build_loader,
)
from msca.data.synthetic import TRAIN_LIST, ensure_synthetic
from msca.storage import open_store

TINY = SyntheticConfig(
    classes=2, videos_per_class=4, val_videos_per_class=2, frames=12, height=24, width=32, kind="scroll"
)


def tiny_cfg(root, **kw):
    base = dict(
        root=str(root),
        num_frames=4,
        stride=2,
        crop_size=16,
        train_short_side=[20, 28],
        test_short_side=20,
        val_clips=2,
        test_clips=3,
        test_crops=3,
        color_jitter_prob=0.5,
        max_bad_fraction=0.5,
        num_workers=0,
    )
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("data") / "synthetic"
    assert ensure_synthetic(open_store(str(r)), TINY)
    return r


def test_synthetic_generation_is_idempotent(tmp_path):
    cfg = tiny_cfg(tmp_path / "gen", synthetic=TINY)
    ds = build_dataset(cfg, "train")
    lst = tmp_path / "gen" / TRAIN_LIST
    mtime = lst.stat().st_mtime_ns
    assert len(ds) == 8 and ds.num_classes == 2 and ds.class_names == ["down_1px", "up_1px"]
    assert len(build_dataset(cfg, "val")) == 4
    assert lst.stat().st_mtime_ns == mtime  # second call: nothing regenerated
    assert sorted(os.listdir(tmp_path)) == ["gen"]  # no temp dirs left behind


def test_shapes(root):
    cfg = tiny_cfg(root)
    s = build_dataset(cfg, "train")[(0, 1)]
    assert s["video"].shape == (4, 3, 16, 16) and s["video"].dtype == torch.float32
    assert isinstance(s["label"], int) and s["index"] == 1 and s["bad_frames"] == 0
    assert build_dataset(cfg, "val")[0]["video"].shape == (2 * 3, 4, 3, 16, 16)
    assert build_dataset(cfg, "test")[0]["video"].shape == (3 * 3, 4, 3, 16, 16)


def test_sample_is_a_function_of_seed_epoch_index(root):
    ds = build_dataset(tiny_cfg(root), "train", seed=7)
    a = ds[(2, 5)]["video"]
    assert torch.equal(a, build_dataset(tiny_cfg(root), "train", seed=7)[(2, 5)]["video"])
    assert not torch.equal(a, ds[(3, 5)]["video"])
    assert not torch.equal(a, build_dataset(tiny_cfg(root), "train", seed=8)[(2, 5)]["video"])
    ds.set_epoch(2)
    assert torch.equal(a, ds[5]["video"])


def _batches(ds, sampler, workers, batch=3):
    return [b for b in build_loader(ds, sampler, batch, workers)]


def test_identical_across_worker_counts(root):
    ds = build_dataset(tiny_cfg(root), "train", seed=3)
    runs = []
    for workers in (0, 2):
        sampler = ResumableDistributedSampler(len(ds), seed=3)
        sampler.set_epoch(1)
        runs.append(_batches(ds, sampler, workers))
    assert len(runs[0]) == 3
    for b0, b2 in zip(*runs):
        for k in ("video", "label", "index"):
            assert torch.equal(b0[k], b2[k])


SUBPROCESS = """
import sys, torch
from msca.data import DataConfig, build_dataset
cfg = DataConfig(root=sys.argv[1], num_frames=4, stride=2, crop_size=16, train_short_side=[20, 28],
                 test_short_side=20, val_clips=2, test_crops=3, color_jitter_prob=0.5)
torch.save([build_dataset(cfg, "train", seed=3)[(e, i)]["video"] for e, i in [(0, 0), (4, 6)]]
           + [build_dataset(cfg, "val", seed=3)[1]["video"]], sys.argv[2])
"""


def test_identical_across_processes(root, tmp_path):
    out = tmp_path / "s.pt"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    subprocess.run([sys.executable, "-c", SUBPROCESS, str(root), str(out)], check=True, env=env, timeout=120)
    theirs = torch.load(out)
    ours = [build_dataset(tiny_cfg(root), "train", seed=3)[(e, i)]["video"] for e, i in [(0, 0), (4, 6)]]
    ours.append(build_dataset(tiny_cfg(root), "val", seed=3)[1]["video"])
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_sampler_partition_and_resume():
    n, world = 10, 3
    samplers = [ResumableDistributedSampler(n, r, world, seed=1) for r in range(world)]
    for s in samplers:
        s.set_epoch(4)
    parts = [list(s) for s in samplers]
    assert all(len(p) == 3 == len(s) for p, s in zip(parts, samplers))  # drop_last: 10 // 3
    flat = [i for p in parts for _, i in p]
    assert len(set(flat)) == 9 and all(e == 4 for p in parts for e, _ in p)
    again = ResumableDistributedSampler(n, 1, world, seed=1)
    again.set_epoch(4, start=2 * world)  # two samples of every rank consumed (global units)
    assert list(again) == parts[1][2:] and len(again) == 1
    other = ResumableDistributedSampler(n, 1, world, seed=1)
    other.set_epoch(5)
    assert list(other) != parts[1]
    padded = [ResumableDistributedSampler(n, r, world, seed=1, drop_last=False) for r in range(world)]
    allidx = [i for s in padded for _, i in s]
    assert len(allidx) == 12 and set(allidx) == set(range(n))
    plain = ResumableDistributedSampler(n, 0, 1, shuffle=False)
    assert [i for _, i in plain] == list(range(n))


def test_resume_mid_epoch_replays_the_same_batches(root):
    ds = build_dataset(tiny_cfg(root), "train", seed=5)
    full_s = ResumableDistributedSampler(len(ds), seed=5)
    full_s.set_epoch(2)
    full = _batches(ds, full_s, 0, batch=2)
    resumed_s = ResumableDistributedSampler(len(ds), seed=5)
    resumed_s.set_epoch(2, start=2 * 2)  # two batches of 2 consumed before the stop
    resumed = _batches(build_dataset(tiny_cfg(root), "train", seed=5), resumed_s, 0, batch=2)
    assert len(resumed) == len(full) - 2
    for a, b in zip(full[2:], resumed):
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["index"], b["index"])


def _copy_root(root, dst):
    import shutil

    shutil.copytree(root, dst)
    return dst


def test_bad_frames_replaced_by_nearest_neighbour(root, tmp_path):
    """A corrupt frame 3 and a missing frame 4 behave exactly like copies of frames 2 and 5."""
    cfg = tiny_cfg(root, stride=1, num_frames=12, sampling="uniform")  # every frame of the 12 is used
    ds = build_dataset(cfg, "val")
    vid = ds.records[0].path
    broken = _copy_root(root, tmp_path / "broken")
    fixed = _copy_root(root, tmp_path / "fixed")

    def f(r, i):
        return r / vid / f"img_{i:05d}.jpg"

    f(broken, 3).write_bytes(f(broken, 3).read_bytes()[:200])  # truncated JPEG
    f(broken, 4).unlink()  # missing
    f(fixed, 3).write_bytes(f(root, 2).read_bytes())
    f(fixed, 4).write_bytes(f(root, 5).read_bytes())
    bad_ds = build_dataset(tiny_cfg(broken, stride=1, num_frames=12, sampling="uniform"), "val")
    ref_ds = build_dataset(tiny_cfg(fixed, stride=1, num_frames=12, sampling="uniform"), "val")
    s = bad_ds[0]
    assert torch.equal(s["video"], ref_ds[0]["video"]) and s["bad_frames"] == 2 and s["skipped"] == 0
    st = bad_ds.stats
    assert st["bad_frames"] == 2 and st["videos_with_bad_frames"] == 1 and st["videos_skipped"] == 0
    assert any("img_00003.jpg" in u for u in st["bad_files"]) and any("img_00004.jpg" in u for u in st["bad_files"])


def test_unreadable_video_is_skipped_deterministically(root, tmp_path):
    broken = _copy_root(root, tmp_path / "broken")
    ds = build_dataset(tiny_cfg(broken), "train", seed=1)
    for p in (broken / ds.records[2].path).iterdir():
        p.write_bytes(b"garbage")
    ds = build_dataset(tiny_cfg(broken), "train", seed=1)
    s = ds[(0, 2)]
    assert s["skipped"] == 1 and s["index"] == 2 and s["label"] == ds.records[3].label
    assert ds.stats["videos_skipped"] == 1
    assert torch.equal(s["video"], build_dataset(tiny_cfg(broken), "train", seed=1)[(0, 2)]["video"])
    assert ds[(0, 2)]["skipped"] == 1 and ds.stats["videos_skipped"] == 1  # remembered, counted once


def test_too_many_bad_videos_is_a_clear_error(root, tmp_path):
    broken = _copy_root(root, tmp_path / "broken")
    ds = build_dataset(tiny_cfg(broken, max_bad_fraction=0.2), "train")  # 8 videos: at most 1 may be bad
    for j in (0, 1):
        (broken / ds.records[j].path / "img_00001.jpg").unlink()
    ds = build_dataset(tiny_cfg(broken, max_bad_fraction=0.2, stride=1, num_frames=12, sampling="uniform"), "train")
    ds[(0, 0)]
    with pytest.raises(BadDataError, match=r"(?s)2 of 8 videos.*max_bad_fraction=0.2.*img_00001.jpg"):
        ds[(0, 1)]


def test_list_errors(tmp_path):
    (tmp_path / "trainValTest").mkdir(parents=True)
    (tmp_path / "trainValTest" / "train.txt").write_text("a/b,3,0\na/c,x,1\n")
    with pytest.raises(ListFormatError, match=r"trainValTest/train.txt:2:"):
        build_dataset(tiny_cfg(tmp_path), "train")
    with pytest.raises(FileNotFoundError, match="val list not found"):
        build_dataset(tiny_cfg(tmp_path), "val")


def test_local_and_s3_give_identical_tensors(root, s3_env):
    bucket = s3_env.make_bucket()
    uri = f"s3://{bucket}/k400"
    s3 = open_store(uri)
    s3.write_many([(k, (root / k).read_bytes()) for k in open_store(str(root)).list()], max_workers=8)
    for split, items in (("train", [(0, 0), (1, 5)]), ("test", [1])):
        local = build_dataset(tiny_cfg(root), split, seed=2)
        remote = build_dataset(tiny_cfg(uri), split, seed=2)
        assert remote.class_names == local.class_names
        for it in items:
            assert torch.equal(local[it]["video"], remote[it]["video"])
    # through forked loader workers (each builds its own S3 client)
    remote = build_dataset(tiny_cfg(uri), "train", seed=2)
    sampler = ResumableDistributedSampler(len(remote), seed=2)
    a, b = _batches(remote, sampler, 2), _batches(build_dataset(tiny_cfg(root), "train", seed=2), sampler, 0)
    assert all(torch.equal(x["video"], y["video"]) for x, y in zip(a, b))


def test_synthetic_on_s3_and_wrong_credentials(s3_env, monkeypatch):
    from msca.storage import StoreAuthError

    uri = f"s3://{s3_env.make_bucket()}/syn"
    small = dataclasses.replace(TINY, videos_per_class=2, val_videos_per_class=1)
    ds = build_dataset(tiny_cfg(uri, synthetic=small), "train")
    assert len(ds) == 4 and ds[(0, 0)]["video"].shape == (4, 3, 16, 16)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StoreAuthError, match="AWS_SECRET_ACCESS_KEY"):
        build_dataset(tiny_cfg(uri), "train")


def test_eval_loader_over_an_index_list_with_read_ahead(root):
    """The evaluator passes a plain list of indices; the main-process loader reads the next batch ahead."""
    ds = build_dataset(tiny_cfg(root), "val")
    batches = list(build_loader(ds, [3, 0, 2], 2, 0))
    assert [b["index"].tolist() for b in batches] == [[3, 0], [2]]
    assert batches[0]["video"].shape == (2, 6, 4, 3, 16, 16)
    assert torch.equal(batches[1]["video"][0], build_dataset(tiny_cfg(root), "val")[2]["video"])
    assert not ds._ahead  # every read-ahead frame was consumed
