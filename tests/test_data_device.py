"""uint8 to the device: the loader ships unnormalised uint8 clips, `to_model_input` normalises them where the
model runs; the model sees exactly the values the float pipeline gave it (bit for bit)."""

import pytest
import torch

from msca.data import (
    DataConfig,
    ResumableDistributedSampler,
    SyntheticConfig,
    build_dataset,
    build_loader,
    to_model_input,
)
from msca.data.synthetic import ensure_synthetic
from msca.storage import open_store

TINY = SyntheticConfig(classes=2, videos_per_class=4, val_videos_per_class=2, frames=16, height=24, width=32)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("u8") / "synthetic"
    assert ensure_synthetic(open_store(str(r)), TINY)
    return r


def cfg_for(root, **kw):
    base = dict(
        root=str(root),
        num_frames=4,
        stride=3,
        crop_size=16,
        train_short_side=[20, 28],
        test_short_side=20,
        val_clips=2,
        test_clips=2,
        test_crops=3,
        color_jitter_prob=0.5,  # every jitter op is exercised
        mean=0.45,
        std=0.225,  # not 0.5/0.5: the scale and shift are real arithmetic
        num_workers=0,
    )
    base.update(kw)
    return DataConfig(**base)


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_uint8_clips_normalised_on_device_are_bit_identical(root, split, dtype):
    cfg = cfg_for(root)
    ref = build_dataset(cfg, split, seed=5)
    u8 = build_dataset(cfg, split, seed=5, uint8=True)
    sampler = ResumableDistributedSampler(len(ref), 0, 1, seed=5, shuffle=split == "train")
    a = list(build_loader(ref, sampler, 3, 0))
    b = list(build_loader(u8, sampler, 3, 0))
    assert len(a) == len(b) > 1
    for x, y in zip(a, b):
        assert x["video"].dtype == torch.float32 and y["video"].dtype == torch.uint8
        assert y["video"].element_size() * 4 == x["video"].element_size()  # 4x fewer bytes to pin and copy
        want = x["video"].to("cpu", dtype=dtype)  # what the trainer fed the model before
        got = to_model_input(y["video"], torch.device("cpu"), dtype, cfg.mean, cfg.std)
        assert got.dtype == dtype and torch.equal(got, want)
        assert torch.equal(to_model_input(x["video"], torch.device("cpu"), dtype, cfg.mean, cfg.std), want)


def test_uint8_clips_through_loader_workers_and_pinning(root):
    """Worker processes ship uint8 batches (shared memory) unchanged; pinning keeps the dtype."""
    cfg = cfg_for(root)
    ds = build_dataset(cfg, "train", seed=1, uint8=True)
    sampler = ResumableDistributedSampler(len(ds), 0, 1, seed=1)
    inproc = [b["video"] for b in build_loader(ds, sampler, 2, 0)]
    workers = [b["video"] for b in build_loader(ds, sampler, 2, 2, pin_memory=torch.cuda.is_available())]
    assert all(v.dtype == torch.uint8 for v in workers)
    assert all(torch.equal(x, y) for x, y in zip(inproc, workers))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() is False")
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_uint8_normalised_on_gpu_is_bit_identical_to_cpu_float(root, dtype):
    cfg = cfg_for(root)
    x = build_dataset(cfg, "train", seed=2)[(0, 3)]["video"]
    y = build_dataset(cfg, "train", seed=2, uint8=True)[(0, 3)]["video"].pin_memory()
    got = to_model_input(y, torch.device("cuda"), dtype, cfg.mean, cfg.std)
    assert torch.equal(got.cpu(), x.to(dtype))
