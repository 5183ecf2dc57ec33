"""Clip-consistent transforms: every frame of a clip gets the same flip, scale, crop and colour jitter.

Train (the original's `Train_ClipAug`, msca.md §4): flip p=0.5 -> resize short side to randint[lo, hi) ->
random crop -> rare colour jitter (brightness, saturation, gamma, hue, each p=0.1) -> scale to [-1, 1].
Eval (`Test_ClipAug`): resize short side -> crops (centre, left, right) at vertical centre -> scale.

Resize: torch's antialiased bicubic on uint8, channels-last, the whole clip in one call. It is PIL's BICUBIC
filter (same a=-0.5 kernel and antialiased support; measured within 1/255 of PIL on every pixel) at ~5x
PIL's speed per core. Flip is applied to the crop after resizing, which equals flipping first (the kernel is
symmetric) and costs 224 columns instead of a full frame.

Augmentation parameters are drawn by `draw_train_params` from an explicit generator in a fixed order (every
draw happens whether or not it is used), so they are a pure function of the generator's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TrainAugParams:
    flip: bool
    short_side: int
    crop_fx: float  # crop offset as a fraction of the free range, in [0, 1)
    crop_fy: float
    brightness: Optional[float] = None  # None: op not applied
    saturation: Optional[float] = None
    gamma: Optional[float] = None
    hue: Optional[float] = None


def draw_train_params(
    rng: np.random.Generator, short_side: Sequence[int] = (224, 330), flip: bool = True, jitter_prob: float = 0.1
) -> TrainAugParams:
    """One clip's augmentation. Ranges are the original's: brightness U[0.5, 2], saturation U[0.5, 3],
    gamma U[0.8, 1.2], hue U[-0.5, 0.5]; short side randint[lo, hi) (hi exclusive, like numpy)."""
    lo, hi = int(short_side[0]), int(short_side[1])
    do_flip = bool(rng.random() < 0.5) and flip
    side = int(rng.integers(lo, hi)) if hi > lo else lo
    fx, fy = float(rng.random()), float(rng.random())
    jitter = []
    for a, b in ((0.5, 2.0), (0.5, 3.0), (0.8, 1.2), (-0.5, 0.5)):
        apply, factor = rng.random() < jitter_prob, float(rng.uniform(a, b))
        jitter.append(factor if apply else None)
    return TrainAugParams(do_flip, side, fx, fy, *jitter)


def resized_size(h: int, w: int, short_side: int) -> Tuple[int, int]:
    """Short side -> `short_side`, long side scaled and floored (torchvision `Resize(int)` semantics)."""
    if h <= w:
        return short_side, int(short_side * w / h)
    return int(short_side * h / w), short_side


def stack_frames(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """List of (H, W, 3) uint8 -> (T, 3, H, W) uint8 channels-last view; odd-sized frames are resized to the
    first frame's size (frames of one video normally share a size)."""
    h, w = frames[0].shape[:2]
    same = [f if f.shape[:2] == (h, w) else _resize_hwc(f, h, w) for f in frames]
    return torch.from_numpy(np.ascontiguousarray(np.stack(same))).permute(0, 3, 1, 2)


def _resize_hwc(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]
    return resize(x, h, w)[0].permute(1, 2, 0).contiguous().numpy()


def resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(T, 3, H, W) uint8 -> (T, 3, h, w) uint8, PIL-style antialiased bicubic."""
    if tuple(x.shape[-2:]) == (h, w):
        return x
    x = x.contiguous(memory_format=torch.channels_last)  # the fast uint8 AVX path
    return F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)


def normalize(x: torch.Tensor, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """uint8 -> float32 `(x/255 - mean) / std` ([-1, 1] for 0.5/0.5), contiguous, on x's device. Two
    elementwise IEEE float32 ops, so the CPU and a GPU give the same bits."""
    out = x.to(torch.float32, memory_format=torch.contiguous_format)
    return out.mul_(1.0 / (255.0 * std)).sub_(mean / std)


def train_clip(
    frames: Sequence[np.ndarray],
    p: TrainAugParams,
    crop: int,
    mean: float = 0.5,
    std: float = 0.5,
    uint8: bool = False,
) -> torch.Tensor:
    """T frames (H, W, 3) uint8 -> (T, 3, crop, crop) float32, one set of parameters for all frames
    (`uint8`: left unnormalised, for `normalize` on the device)."""
    x = stack_frames(frames)  # (T, 3, H, W) uint8
    h, w = resized_size(x.shape[2], x.shape[3], p.short_side)
    if h < crop or w < crop:
        raise ValueError(f"short side {p.short_side} is smaller than the crop {crop}")
    x = resize(x, h, w)  # (T, 3, h, w)
    oy = int(p.crop_fy * (h - crop + 1))
    ox = int(p.crop_fx * (w - crop + 1))  # offset in the (possibly flipped) frame
    if p.flip:
        ox = w - crop - ox  # same pixels, found in the unflipped frame
    x = x[:, :, oy : oy + crop, ox : ox + crop]  # (T, 3, crop, crop)
    if p.flip:
        x = x.flip(-1)
    if any(v is not None for v in (p.brightness, p.saturation, p.gamma, p.hue)):
        x = color_jitter(x, p)
    return x.contiguous() if uint8 else normalize(x, mean, std)


def to_model_input(
    video: torch.Tensor, device: torch.device, dtype: torch.dtype, mean: float = 0.5, std: float = 0.5
) -> torch.Tensor:
    """A batch from the loader -> the model's input on `device`. uint8 clips cross to the device as bytes
    (4x less pinned memory and host-to-device traffic than float32) and are normalised there; float clips
    (normalised by the loader) are only moved. Both give the same values."""
    x = video.to(device, non_blocking=True)  # (B, ..., 3, H, W)
    if x.dtype == torch.uint8:
        x = normalize(x, mean, std)
    return x.to(dtype)


def eval_crop_offsets(h: int, w: int, crop: int, n: int) -> List[Tuple[int, int]]:
    """(y, x) of the eval crops: 1 -> centre; 3 -> centre, left, right (the original's order); other n ->
    n evenly spaced along x. y is always centred (portrait frames therefore get the same crop 3 times, as
    in the original)."""
    y = int(round((h - crop) / 2.0))
    centre = int(round((w - crop) / 2.0))
    if n == 1:
        xs = [centre]
    elif n == 3:
        xs = [centre, 0, w - crop]
    else:
        xs = [int(round(v)) for v in np.linspace(0, w - crop, n)]
    return [(y, x) for x in xs]


def eval_views(
    frames: Sequence[np.ndarray],
    clips: np.ndarray,
    short_side: int,
    crop: int,
    n_crops: int,
    mean: float = 0.5,
    std: float = 0.5,
    uint8: bool = False,
) -> torch.Tensor:
    """Unique frames + (n, T) positions into them -> (n * n_crops, T, 3, crop, crop) float32 (or uint8).

    View v = clip k * n_crops + crop j. Each unique frame is resized once even when clips overlap.
    """
    x = stack_frames(frames)  # (U, 3, H, W) uint8
    h, w = resized_size(x.shape[2], x.shape[3], short_side)
    if h < crop or w < crop:
        raise ValueError(f"test short side {short_side} is smaller than the crop {crop}")
    x = resize(x, h, w)  # (U, 3, h, w)
    offsets = eval_crop_offsets(h, w, crop, n_crops)
    clips_t = torch.as_tensor(np.asarray(clips), dtype=torch.long)
    views = [
        x[clips_t[k]][:, :, oy : oy + crop, ox : ox + crop]  # (T, 3, crop, crop)
        for k in range(clips_t.shape[0])
        for oy, ox in offsets
    ]
    views = torch.stack(views)  # (V, T, 3, crop, crop) uint8
    return views if uint8 else normalize(views, mean, std)


# --- colour jitter: torchvision's functional ops on PIL images, re-done on the whole clip ---------------------
def color_jitter(x: torch.Tensor, p: TrainAugParams) -> torch.Tensor:
    """(T, 3, H, W) uint8 -> uint8, ops in the original's order; each rounds to uint8 like the PIL ops.

    Cheap enough to leave on: brightness and gamma are 256-entry lookup tables, saturation and hue work
    in place (a 224 px 8-frame clip: ~2 ms, ~1 ms, ~2 ms, ~13 ms; each op runs on 10% of clips)."""
    y = x.contiguous()
    if p.brightness is not None:  # ImageEnhance.Brightness: blend with black
        y = _lut(y, np.arange(256) * p.brightness)
    if p.saturation is not None:  # ImageEnhance.Color: blend with the grey (ITU-R 601 luma) image
        f = y.to(torch.float32)
        r, g, b = f.unbind(-3)
        grey = (0.299 * r + 0.587 * g + 0.114 * b).round_().unsqueeze(-3)
        y = f.sub_(grey).mul_(p.saturation).add_(grey).clamp_(0.0, 255.0).round_().to(torch.uint8)
    if p.gamma is not None:  # adjust_gamma(gain=1): 255 * (x/255)^gamma
        y = _lut(y, 255.0 * (np.arange(256) / 255.0) ** p.gamma)
    if p.hue is not None:  # adjust_hue: rotate H in HSV by hue * 360 degrees
        y = _hue_shift(y, p.hue).clamp_(0.0, 255.0).round_().to(torch.uint8)
    return y


def _lut(x: torch.Tensor, values: np.ndarray) -> torch.Tensor:
    """Apply a per-value map (256 floats, rounded and clipped to uint8) to a uint8 tensor."""
    table = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return torch.from_numpy(np.take(table, x.numpy()))


def _hue_shift(x: torch.Tensor, shift: float) -> torch.Tensor:
    """(T, 3, H, W) uint8 -> float32 in [0, 255]: HSV hue rotated by `shift` turns, V and S kept.

    HSV -> RGB in closed form: channel = V - (V - min) * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6,
    n = 5, 3, 1 for R, G, B, which avoids building H, S, V planes and a six-way select."""
    y = x.to(torch.float32)
    r, g, b = y.unbind(-3)
    hi = torch.maximum(torch.maximum(r, g), b)
    lo = torch.minimum(torch.minimum(r, g), b)
    d = hi - lo
    # 6 * hue: sector offset by which channel is the max, then the position inside the sector
    h = torch.where(hi == r, g - b, torch.where(hi == g, (b - r).add_(2 * d), (r - g).add_(4 * d)))
    h.div_(d.clamp_min(1e-6)).add_(6.0 * shift + 6.0).remainder_(6.0)
    out = torch.empty_like(y)
    for c, n in enumerate((5.0, 3.0, 1.0)):
        k = (h + n).remainder_(6.0)
        torch.sub(hi, torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0).mul_(d), out=out.select(-3, c))
    return out


def describe() -> str:
    """One line for logs and the benchmark: which resize is used."""
    return "torch uint8 antialiased bicubic (PIL BICUBIC-equivalent), channels-last"


__all__ = [
    "TrainAugParams",
    "draw_train_params",
    "resized_size",
    "train_clip",
    "eval_views",
    "eval_crop_offsets",
    "color_jitter",
    "normalize",
    "to_model_input",
    "resize",
    "stack_frames",
    "describe",
]
