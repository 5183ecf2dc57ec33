"""Frame packs: the packer, layout detection, and clips bit-identical to the frame folders they came from."""

import shutil

import pytest
import torch

from msca.data import DataConfig, PackMismatchError, SyntheticConfig, build_dataset
from msca.data.frames import MARKER, PackFrames, pack_key
from msca.data.pack import main as pack_main
from msca.data.pack import pack
from msca.data.synthetic import TRAIN_LIST, VAL_LIST, ensure_synthetic
from msca.storage import open_store

TINY = SyntheticConfig(
    classes=2, videos_per_class=4, val_videos_per_class=2, frames=40, height=24, width=32, kind="scroll"
)


def cfg_for(root, **kw):
    base = dict(
        root=str(root),
        num_frames=4,
        stride=8,
        crop_size=16,
        train_short_side=[20, 28],
        test_short_side=20,
        val_clips=2,
        test_clips=3,
        test_crops=3,
        color_jitter_prob=0.5,
        max_bad_fraction=0.9,
        num_workers=0,
    )
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The tiny synthetic set with bad input: a truncated frame, a missing frame, and one video unreadable."""
    r = tmp_path_factory.mktemp("packs") / "folders"
    assert ensure_synthetic(open_store(str(r)), TINY)
    ds = build_dataset(cfg_for(r), "train")
    vid = r / ds.records[1].path
    (vid / "img_00009.jpg").write_bytes((vid / "img_00009.jpg").read_bytes()[:150])  # corrupt
    (vid / "img_00017.jpg").unlink()  # missing
    for p in (r / ds.records[5].path).iterdir():  # no readable frame: substituted
        p.write_bytes(b"garbage")
    return r


def _items(ds, epochs=2):
    return [(e, i) for e in range(epochs) for i in range(len(ds))]


def _same_clips(a_root, b_root, **kw):
    """Every train/val/test item of the folder tree and the pack tree: same tensors, labels and bad counts."""
    bad = skipped = 0
    for split in ("train", "val", "test"):
        a = build_dataset(cfg_for(a_root, **kw), split, seed=3)
        b = build_dataset(cfg_for(b_root, **kw), split, seed=3)
        assert a.frames.layout == "folders" and b.frames.layout == "packs"
        items = _items(a) if split == "train" else list(range(len(a)))
        for sa, sb in zip(a.__getitems__(items), b.__getitems__(items)):
            assert torch.equal(sa["video"], sb["video"]), (split, sa["index"])
            assert (sa["label"], sa["bad_frames"], sa["skipped"]) == (sb["label"], sb["bad_frames"], sb["skipped"])
        assert {k: v for k, v in a.stats.items() if k != "bad_files"} == {
            k: v for k, v in b.stats.items() if k != "bad_files"
        }
        bad, skipped = bad + a.stats["bad_frames"], skipped + a.stats["videos_skipped"]
    return bad, skipped


def test_packs_give_bit_identical_clips_local(folders, tmp_path):
    out = pack(open_store(str(folders)), open_store(str(tmp_path / "packs")), [TRAIN_LIST, VAL_LIST], "img_{:05d}.jpg")
    assert out["videos"] == 12 and out["packed"] == 12
    assert (tmp_path / "packs" / MARKER).exists() and (tmp_path / "packs" / TRAIN_LIST).exists()
    counts = [
        _same_clips(folders, tmp_path / "packs"),
        _same_clips(folders, tmp_path / "packs", sampling="uniform", flip=False),
        _same_clips(folders, tmp_path / "packs", num_frames=40, stride=1),  # every frame: both bad ones
    ]
    assert all(skipped for _, skipped in counts) and counts[2][0] >= 2  # the bad input was exercised


def test_a_clip_is_one_ranged_read_when_its_frames_are_close(folders, tmp_path):
    """A 16 MiB gap puts a 4x8 clip in one read; gap 0 reads each frame alone, coalescing neighbours."""
    pack(open_store(str(folders)), open_store(str(tmp_path / "p")), [TRAIN_LIST], "img_{:05d}.jpg", progress=False)
    ds = build_dataset(cfg_for(tmp_path / "p", pack_gap_bytes=16 << 20), "train")
    assert isinstance(ds.frames, PackFrames)
    rec = ds.records[0]
    reqs, missing = ds.frames.requests(rec, [1, 9, 17, 25])
    assert len(reqs) == 1 and not missing and reqs[0][1] == [1, 9, 17, 25]
    ds0 = build_dataset(cfg_for(tmp_path / "p"), "train")  # local default: exact frames, adjacent ones coalesced
    reqs = ds0.frames.requests(rec, [1, 9, 17, 25])[0]  # one request of 4 ranges, fetched concurrently
    assert len(reqs) == 1 and ds0.frames.gets(reqs[0][0]) == 4 and reqs[0][1] == [1, 9, 17, 25]
    assert ds0.frames.gets(ds0.frames.requests(rec, [3, 4, 5, 9])[0][0][0]) == 2
    bad = ds0.records[1]  # frame 17 was missing from the folder: known missing, no read
    assert ds0.frames.requests(bad, [9, 17])[1] == [17]


def test_packer_is_resumable_and_idempotent(folders, tmp_path, capsys):
    dst = tmp_path / "p"
    assert pack_main([str(folders), str(dst), "--no-progress"]) == 0
    assert "packed 12 videos (0 already done)" in capsys.readouterr().out
    first = {p.name: p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert pack_main([str(folders), str(dst), "--no-progress"]) == 0  # nothing left to do
    assert "packed 0 videos (12 already done)" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in dst.rglob("*") if p.is_file()} == first
    journal = sorted((dst / ".packing").iterdir())
    journal[0].unlink()  # a run cut off before this chunk finished
    (dst / MARKER).unlink()
    assert pack_main([str(folders), str(dst), "--no-progress", "--workers", "2"]) == 0
    assert "packed 12 videos (0 already done)" in capsys.readouterr().out  # 12 videos = one chunk
    assert {p.name: p.read_bytes() for p in dst.rglob("*") if p.is_file()} == first


def test_packer_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    assert pack_main([str(tmp_path / "src"), str(tmp_path / "dst"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trainValTest/train.txt: no such list file" in err


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_pack_and_index_disagreeing_is_one_line_naming_the_video(folders, tmp_path, damage):
    dst = tmp_path / "p"
    pack(open_store(str(folders)), open_store(str(dst)), [TRAIN_LIST], "img_{:05d}.jpg", progress=False)
    ds = build_dataset(cfg_for(dst), "train")
    rec = ds.records[2]
    blob = bytearray((dst / pack_key(rec.path)).read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0xFF
    else:
        del blob[len(blob) // 2 :]
    (dst / pack_key(rec.path)).write_bytes(bytes(blob))
    ds = build_dataset(cfg_for(dst, num_frames=40, stride=1), "train")  # every frame
    with pytest.raises(PackMismatchError) as e:
        ds[(0, 2)]
    msg = str(e.value)
    assert "\n" not in msg and rec.path in msg and "python -m msca.data.pack" in msg


def test_a_missing_pack_index_names_the_fix(folders, tmp_path):
    dst = tmp_path / "p"
    pack(open_store(str(folders)), open_store(str(dst)), [TRAIN_LIST, VAL_LIST], "img_{:05d}.jpg", progress=False)
    (dst / (VAL_LIST + ".packindex")).unlink()
    with pytest.raises(FileNotFoundError, match="no pack index for list trainValTest/val.txt"):
        build_dataset(cfg_for(dst), "val")


def test_packs_on_s3_give_bit_identical_clips(folders, s3_env, tmp_path):
    """S3 folders -> packer -> S3 packs: the same clips as the local folders, through ranged GETs."""
    bucket = s3_env.make_bucket()
    src = open_store(f"s3://{bucket}/folders")
    local = open_store(str(folders))
    src.write_many([(k, local.read_bytes(k)) for k in local.list()], max_workers=8)
    out = pack(src, open_store(f"s3://{bucket}/packs"), [TRAIN_LIST, VAL_LIST], "img_{:05d}.jpg", progress=False)
    assert out["packed"] == 12
    for gap, gets in ((16 << 20, 1), (0, 4)):  # one GET for the clip's span; each frame alone (obstore, at once)
        _same_clips(folders, f"s3://{bucket}/packs", pack_gap_bytes=gap)
        ds = build_dataset(cfg_for(f"s3://{bucket}/packs", pack_gap_bytes=gap), "train")
        reqs = ds.frames.requests(ds.records[0], [1, 9, 17, 25])[0]
        assert len(reqs) == 1 and ds.frames.gets(reqs[0][0]) == gets


def test_copied_pack_tree_still_reads(folders, tmp_path):
    """A pack tree is plain objects: copying it (e.g. to node-local scratch) keeps it readable."""
    pack(open_store(str(folders)), open_store(str(tmp_path / "p")), [TRAIN_LIST, VAL_LIST], "img_{:05d}.jpg")
    shutil.copytree(tmp_path / "p", tmp_path / "q")
    _same_clips(folders, tmp_path / "q")


def test_bad_data_threshold_counts_all_loader_workers_together(tmp_path):
    """Two unreadable videos, one per loader worker: each worker alone is within max_bad_fraction (1 of 8),
    together they are past it, and the run stops naming the files."""
    from msca.data import BadDataError, ResumableDistributedSampler, build_loader

    r = tmp_path / "data"
    assert ensure_synthetic(open_store(str(r)), TINY)
    cfg = cfg_for(r, max_bad_fraction=1 / 8, color_jitter_prob=0.0)
    ds = build_dataset(cfg, "train")
    for j in (0, 3):  # worker 0 loads batches 0, 2, .. (video 0), worker 1 batches 1, 3, .. (video 3)
        for p in (r / ds.records[j].path).iterdir():
            p.write_bytes(b"garbage")
    alone = build_dataset(cfg, "train")
    alone[(0, 0)]  # one bad video in one process: within the threshold
    ds = build_dataset(cfg, "train")
    sampler = ResumableDistributedSampler(len(ds), 0, 1, seed=0, shuffle=False)
    with pytest.raises(BadDataError, match="2 of 8 videos"):
        for _ in build_loader(ds, sampler, 1, 2):
            pass


def test_a_404_on_a_listed_s3_frame_is_read_again_before_it_counts(folders, s3_env, tmp_path):
    """A frame that answers 404 and is there a moment later (a store restarting, a lagging replica) gives the
    same clip as if it had always been there; one that stays missing counts as bad after the re-reads."""
    import threading

    bucket = s3_env.make_bucket()
    s3 = open_store(f"s3://{bucket}/f")
    local = open_store(str(folders))
    ref = build_dataset(cfg_for(folders, num_frames=40, stride=1), "val")
    rec = ref.records[0]
    s3.write_many([(k, local.read_bytes(k)) for k in local.list() if "img_00007" not in k or rec.path not in k])
    ds = build_dataset(cfg_for(f"s3://{bucket}/f", num_frames=40, stride=1), "val")
    key = f"{rec.path}/img_00007.jpg"
    late = threading.Timer(0.1, lambda: s3.write_bytes(key, local.read_bytes(key)))  # lands before the re-read
    late.start()
    s = ds[0]
    late.join()
    assert s["bad_frames"] == 0 and torch.equal(s["video"], ref[0]["video"])
    s3.delete(key)
    ds = build_dataset(cfg_for(f"s3://{bucket}/f", num_frames=40, stride=1), "val")
    assert ds[0]["bad_frames"] == 1 and any("img_00007" in u for u in ds.stats["bad_files"])


def test_pack_index_reaches_spawned_workers_as_shared_memory():
    """Loader workers are spawned once obstore runs: the index must travel as shared-memory handles, not data."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import numpy as np

    from msca.data.frames import PackIndex

    n = 2_000_000  # frames
    sizes = np.random.default_rng(0).integers(1, 2**32 - 1, n, dtype=np.uint32)
    idx = PackIndex(["a/v1", "b/v2"], np.array([0, n // 2, n]), sizes, sizes[::-1].copy(), "test")
    handles = bytes(ForkingPickler.dumps(idx))
    assert len(handles) < 100_000 < n * 8 <= len(pickle.dumps(idx))  # plain pickle still carries the data
    back = pickle.loads(handles)
    assert np.array_equal(back.sizes, sizes) and np.array_equal(back.crcs, sizes[::-1])
    back.sizes[0] = 7  # the same memory, not a copy
    assert idx.sizes[0] == 7
    offsets, crcs = back.video("b/v2")
    assert offsets[-1] == int(sizes[n // 2 :].astype(np.int64).sum()) and crcs[0] == sizes[n // 2 - 1]
