"""Which frames make a clip: pure functions of the video length and an explicit random generator.

Dense "T x stride" sampling reproduces the original's `read_random_clip` / `read_clip` formulas exactly
(msca.md §4), including its quirks: the last valid train start is never drawn (numpy's exclusive upper bound)
and videos shorter than T*stride wrap around (mod F). Frame indices are 1-based, as on disk.

Randomness never comes from global state: `sample_rng(seed, epoch, index, stream)` is a pure function of its
arguments, so a resumed run (or a different worker count) replays exactly the same clips.
"""

from __future__ import annotations

import numpy as np

SAMPLING_STREAM, AUGMENT_STREAM = 0, 1


def sample_rng(seed: int, epoch: int, index: int, stream: int) -> np.random.Generator:
    """An independent generator per (seed, epoch, sample index, stream); streams keep sampling and
    augmentation draws apart so changing one never shifts the other."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, index, stream])))


def dense_max_bound(num_video_frames: int, t: int, stride: int) -> int:
    return max(num_video_frames - t * stride + 1, 1)


def dense_indices(num_video_frames: int, t: int, stride: int, start: int) -> np.ndarray:
    """(t,) 1-based frame indices `(i*stride + start) % F + 1` (wrap-around for short videos)."""
    return (np.arange(t) * stride + start) % num_video_frames + 1


def dense_train_start(num_video_frames: int, t: int, stride: int, rng: np.random.Generator) -> int:
    """The original: `st = 0 if max_bound == 1 else randint(0, max_bound - 1)` (upper bound exclusive)."""
    mb = dense_max_bound(num_video_frames, t, stride)
    return 0 if mb == 1 else int(rng.integers(0, mb - 1))


def dense_train_indices(num_video_frames: int, t: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """(t,) 1-based indices of one random training clip."""
    return dense_indices(num_video_frames, t, stride, dense_train_start(num_video_frames, t, stride, rng))


def dense_test_starts(num_video_frames: int, t: int, stride: int, n: int) -> list:
    """n evenly spaced starts: `tick = F/n; st_k = clip(int(k*tick), 0, max_bound)`; all 0 when max_bound == 1."""
    mb = dense_max_bound(num_video_frames, t, stride)
    if mb == 1:
        return [0] * n
    tick = num_video_frames / n
    return [int(np.clip(int(k * tick), 0, mb)) for k in range(n)]


def dense_test_indices(num_video_frames: int, t: int, stride: int, n: int) -> np.ndarray:
    """(n, t) 1-based indices of the n test clips."""
    return np.stack(
        [dense_indices(num_video_frames, t, stride, s) for s in dense_test_starts(num_video_frames, t, stride, n)]
    )


def _segments(num_video_frames: int, t: int):
    edges = np.linspace(0, num_video_frames, t + 1)
    return edges[:-1], edges[1:]


def uniform_train_indices(num_video_frames: int, t: int, rng: np.random.Generator) -> np.ndarray:
    """(t,) TSN-style: one random frame from each of t equal segments (segments repeat frames when F < t)."""
    lo, hi = _segments(num_video_frames, t)
    lo_i = np.floor(lo).astype(np.int64)
    hi_i = np.maximum(np.floor(hi).astype(np.int64), lo_i + 1)
    idx = rng.integers(lo_i, hi_i)
    return np.minimum(idx, num_video_frames - 1) + 1


def uniform_test_indices(num_video_frames: int, t: int, n: int) -> np.ndarray:
    """(n, t): clip k takes the frame at fraction (k + 0.5)/n of every segment (n = 1: segment centres)."""
    lo, hi = _segments(num_video_frames, t)
    frac = (np.arange(n)[:, None] + 0.5) / n
    idx = np.floor(lo[None] + (hi - lo)[None] * frac).astype(np.int64)
    return np.clip(idx, 0, num_video_frames - 1) + 1


def train_indices(sampling: str, num_video_frames: int, t: int, stride: int, rng: np.random.Generator):
    if sampling == "dense":
        return dense_train_indices(num_video_frames, t, stride, rng)
    if sampling == "uniform":
        return uniform_train_indices(num_video_frames, t, rng)
    raise ValueError(f"sampling must be 'dense' or 'uniform', got {sampling!r}")


def eval_indices(sampling: str, num_video_frames: int, t: int, stride: int, n: int) -> np.ndarray:
    if sampling == "dense":
        return dense_test_indices(num_video_frames, t, stride, n)
    if sampling == "uniform":
        return uniform_test_indices(num_video_frames, t, n)
    raise ValueError(f"sampling must be 'dense' or 'uniform', got {sampling!r}")
