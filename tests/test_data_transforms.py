"""Transforms: clip-consistent (one set of parameters for all T frames), PIL-equivalent resize, any input size."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from msca.data.decode import DecodeError, decode_rgb, decoders
from msca.data.sampling import sample_rng
from msca.data.transforms import (
    TrainAugParams,
    color_jitter,
    draw_train_params,
    eval_crop_offsets,
    eval_views,
    resize,
    resized_size,
    train_clip,
)


def frames(t=4, h=40, w=52, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(t)]


def jpeg(arr, quality=92):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


ALL_ON = TrainAugParams(
    flip=True, short_side=36, crop_fx=0.3, crop_fy=0.7, brightness=1.4, saturation=2.0, gamma=0.9, hue=0.2
)


@pytest.mark.parametrize("seed", range(6))
def test_train_clip_is_clip_consistent(seed):
    """Processing a clip equals processing each frame alone with the same parameters (nothing per-frame)."""
    p = draw_train_params(sample_rng(seed, 0, 0, 1), (32, 48), True, 0.5) if seed else ALL_ON
    fr = frames()
    clip = train_clip(fr, p, crop=28)  # (T, 3, 28, 28)
    assert clip.shape == (4, 3, 28, 28) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    for i, f in enumerate(fr):
        assert torch.equal(clip[i], train_clip([f], p, crop=28)[0])
    same = train_clip([fr[0]] * 3, p, crop=28)
    assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2])


def test_flip_and_crop_geometry():
    """flip -> resize -> crop at offset o, as the original, equals the mirrored crop of the unflipped frame."""
    fr = frames(1, 30, 40)
    plain = TrainAugParams(flip=False, short_side=30, crop_fx=0.0, crop_fy=0.0)  # no resize: crop (0, 0)
    flipped = TrainAugParams(flip=True, short_side=30, crop_fx=0.0, crop_fy=0.0)
    a = train_clip(fr, plain, crop=20)[0]
    b = train_clip(fr, flipped, crop=20)[0]
    ref = torch.from_numpy(fr[0]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(a, ref[:, :20, :20], atol=1e-6)
    assert torch.allclose(b, ref.flip(-1)[:, :20, :20], atol=1e-6)


def test_resize_matches_pil_bicubic():
    arr = np.asarray(Image.fromarray(frames(1, 120, 160)[0]).resize((160, 120), Image.BILINEAR))
    for h, w in [(90, 120), (60, 80), (150, 200)]:
        ours = resize(torch.from_numpy(arr.copy()).permute(2, 0, 1)[None], h, w)[0].permute(1, 2, 0).numpy()
        pil = np.asarray(Image.fromarray(arr).resize((w, h), Image.BICUBIC))
        assert np.abs(ours.astype(int) - pil).max() <= 1


def test_short_side_floor_and_sizes():
    assert resized_size(331, 440, 224) == (224, 297)
    assert resized_size(440, 331, 224) == (297, 224)
    # works for any input size: resize is the first step
    for h, w in [(17, 23), (64, 86), (331, 440)]:
        p = TrainAugParams(flip=False, short_side=64, crop_fx=0.5, crop_fy=0.5)
        assert train_clip(frames(2, h, w), p, crop=56).shape == (2, 3, 56, 56)


def test_draw_params_ranges_and_rarity():
    ps = [draw_train_params(sample_rng(s, 0, 0, 1), (224, 330), True, 0.1) for s in range(2000)]
    sides = {p.short_side for p in ps}
    assert min(sides) == 224 and max(sides) == 329
    assert 0.45 < np.mean([p.flip for p in ps]) < 0.55
    for name, lo, hi in [("brightness", 0.5, 2), ("saturation", 0.5, 3), ("gamma", 0.8, 1.2), ("hue", -0.5, 0.5)]:
        vals = [getattr(p, name) for p in ps if getattr(p, name) is not None]
        assert 0.07 < len(vals) / len(ps) < 0.13 and lo <= min(vals) and max(vals) <= hi
    assert not any(p.flip for p in (draw_train_params(sample_rng(s, 0, 0, 1), (8, 9), False) for s in range(50)))


def test_color_jitter_ops():
    x = torch.from_numpy(np.stack(frames(2, 8, 8))).permute(0, 3, 1, 2).contiguous()
    ident = TrainAugParams(False, 8, 0, 0, brightness=1.0, saturation=1.0, gamma=1.0, hue=0.0)
    assert (color_jitter(x, ident).int() - x.int()).abs().max() <= 1
    dark = color_jitter(x, TrainAugParams(False, 8, 0, 0, brightness=0.5))
    assert torch.equal(dark, (x.float() * 0.5).round().to(torch.uint8))
    grey = color_jitter(x, TrainAugParams(False, 8, 0, 0, saturation=0.0))
    assert (grey.max(1).values.int() - grey.min(1).values.int()).max() <= 1
    full_turn = color_jitter(x, TrainAugParams(False, 8, 0, 0, hue=0.5))
    back = color_jitter(full_turn, TrainAugParams(False, 8, 0, 0, hue=0.5))  # +180 deg twice
    assert (back.int() - x.int()).abs().float().mean() < 2


def test_eval_views_layout_and_crops():
    assert eval_crop_offsets(64, 86, 56, 3) == [(4, 15), (4, 0), (4, 30)]  # centre, left, right
    assert eval_crop_offsets(86, 64, 56, 3) == [(15, 4), (15, 0), (15, 8)]
    assert eval_crop_offsets(64, 86, 56, 1) == [(4, 15)]
    fr = frames(5, 64, 86)
    clips = np.array([[0, 1, 2], [2, 3, 4]])  # (n=2, T=3) into 5 unique frames
    v = eval_views(fr, clips, 64, 56, 3)
    assert v.shape == (6, 3, 3, 56, 56)  # (clips*crops, T, 3, c, c)
    full = torch.from_numpy(np.stack(fr)).permute(0, 3, 1, 2).float() / 127.5 - 1
    for k in range(2):
        for j, (oy, ox) in enumerate(eval_crop_offsets(64, 86, 56, 3)):
            assert torch.allclose(v[k * 3 + j], full[clips[k]][:, :, oy : oy + 56, ox : ox + 56], atol=1e-6)


def test_decoders_and_corruption():
    arr = np.asarray(Image.fromarray(frames(1, 8, 12)[0]).resize((96, 64), Image.BICUBIC))  # smooth
    data = jpeg(arr)
    assert decoders()[0][0] == "simplejpeg"
    out = decode_rgb(data)
    assert out.shape == (64, 96, 3) and np.abs(out.astype(int) - arr).mean() < 12
    assert decode_rgb(data, min_short=30).shape == (32, 48, 3)  # DCT-domain 1/2 (like PIL draft)
    assert decode_rgb(data, min_short=33).shape == (64, 96, 3)
    png = io.BytesIO()
    Image.fromarray(arr).save(png, format="PNG")
    assert decode_rgb(png.getvalue()).shape == (64, 96, 3)  # non-JPEG: PIL fallback
    for bad in [b"", b"not an image", data[: len(data) // 2]]:
        with pytest.raises(DecodeError):
            decode_rgb(bad)


def test_hue_shift_matches_hsv_reference():
    import colorsys

    x = torch.from_numpy(np.stack(frames(1, 6, 7))).permute(0, 3, 1, 2).contiguous()  # (1, 3, 6, 7)
    for shift in (-0.45, -0.1, 0.2, 0.5):
        ours = color_jitter(x, TrainAugParams(False, 8, 0, 0, hue=shift))[0].permute(1, 2, 0).numpy().astype(int)
        ref = np.zeros_like(ours)
        for i, j in np.ndindex(6, 7):
            h, s, v = colorsys.rgb_to_hsv(*(x[0, :, i, j].numpy() / 255.0))
            ref[i, j] = np.rint(np.array(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)) * 255)
        assert np.abs(ours - ref).max() <= 1
