"""`VideoClipDataset`: list records + a `Store` of frame folders -> augmented clip tensors.

A sample is a pure function of (seed, epoch, index): the clip indices and the augmentation come from
generators seeded by exactly those numbers (`sampling.sample_rng`), never from worker ids or global RNG
state. `dataset[(epoch, index)]` is what `ResumableDistributedSampler` yields; `dataset[index]` uses
`self.epoch`.

Bad input (frames that are missing or do not decode):
  * a bad frame is replaced by its nearest readable frame in the same video (previous before next on a
    tie), and counted;
  * a video with no readable frame is "skipped": since the sampler's order is fixed, the sample is
    deterministically replaced by the next readable video in list order (index+1, index+2, ... wrapping),
    using the same (seed, epoch, index) randomness. It is counted and remembered (per process) so it is
    not probed again;
  * once the videos affected (bad frames or skipped) exceed `max_bad_fraction` of the list in one process,
    `BadDataError` is raised naming the files.
Other storage errors (credentials, missing bucket, network after retries) are raised, never counted.
Counters live in the process that loads: `stats` in the main process sees only `num_workers=0` loading;
every sample also carries its own `bad_frames` / `skipped` counts, which the collate sums per batch.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from msca.data.decode import DecodeError, decode_rgb
from msca.data.lists import VideoRecord
from msca.data.sampling import AUGMENT_STREAM, SAMPLING_STREAM, eval_indices, sample_rng, train_indices
from msca.data.transforms import draw_train_params, eval_views, train_clip
from msca.storage import Store

log = logging.getLogger(__name__)


class BadDataError(RuntimeError):
    """Too many unreadable frames/videos (past `max_bad_fraction`), or none readable at all."""


class VideoClipDataset(Dataset):
    """Train: one random clip per item, (T, 3, crop, crop). Eval: `clips` x `crops` views,
    (V, T, 3, crop, crop) with view v = clip k * crops + crop j."""

    def __init__(self, store: Store, records: Sequence[VideoRecord], *, train: bool,
                 frame_format: str = "img_{:05d}.jpg", num_frames: int = 8, stride: int = 32,
                 sampling: str = "dense", crop_size: int = 224, train_short_side: Sequence[int] = (224, 330),
                 test_short_side: int = 224, clips: int = 1, crops: int = 3, flip: bool = True,
                 color_jitter_prob: float = 0.1, mean: float = 0.5, std: float = 0.5, seed: int = 0,
                 max_bad_fraction: float = 0.01, io_workers: int = 8,
                 class_names: Optional[List[str]] = None, num_classes: Optional[int] = None, name: str = ""):
        if sampling not in ("dense", "uniform"):
            raise ValueError(f"sampling must be 'dense' or 'uniform', got {sampling!r}")
        if train and train_short_side[0] < crop_size:
            raise ValueError(f"train_short_side {list(train_short_side)} starts below crop_size {crop_size}")
        if not train and test_short_side < crop_size:
            raise ValueError(f"test_short_side {test_short_side} is smaller than crop_size {crop_size}")
        frame_format.format(1)  # fail early on a bad format string
        self.store, self.records, self.train = store, list(records), train
        self.frame_format, self.num_frames, self.stride, self.sampling = frame_format, num_frames, stride, sampling
        self.crop_size, self.train_short_side, self.test_short_side = crop_size, tuple(train_short_side), test_short_side
        self.clips, self.crops, self.flip, self.color_jitter_prob = clips, crops, flip, color_jitter_prob
        self.mean, self.std, self.seed = mean, std, seed
        self.max_bad_fraction, self.io_workers = max_bad_fraction, io_workers
        self.class_names = class_names
        self.num_classes = num_classes if num_classes is not None else (
            len(class_names) if class_names else max((r.label for r in self.records), default=-1) + 1)
        self.name = name
        self.epoch = 0
        # per-process bad-input bookkeeping
        self._bad_frames = 0
        self._bad_files: Dict[str, str] = {}        # url -> reason (first few hundred)
        self._videos_bad: set = set()               # list indices with >= 1 replaced frame
        self._unreadable: Dict[int, str] = {}       # list index -> video url

    # --- Dataset API ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used when an item is a plain int (the sampler passes (epoch, index) tuples instead)."""
        self.epoch = int(epoch)

    def __getitem__(self, item: Union[int, Tuple[int, int]]) -> dict:
        epoch, index = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (self.epoch, int(item))
        n = len(self.records)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} videos")
        for step in range(n):
            j = (index + step) % n
            if j in self._unreadable:
                continue
            out = self._load(j, epoch, index)
            if out is not None:
                video, bad = out
                return {"video": video, "label": self.records[j].label, "index": index,
                        "bad_frames": bad, "skipped": int(j != index)}
            self._mark_unreadable(j)
        raise BadDataError(f"{self.name or 'dataset'}: no readable video among {n} (e.g. "
                           f"{', '.join(list(self._unreadable.values())[:5])})")

    @property
    def stats(self) -> dict:
        """This process's counts of replaced frames and skipped videos, with the first offending files."""
        return {"bad_frames": self._bad_frames, "videos_with_bad_frames": len(self._videos_bad),
                "videos_skipped": len(self._unreadable), "bad_files": list(self._bad_files)[:20]}

    # --- loading ----------------------------------------------------------------------------------------------
    def _load(self, j: int, epoch: int, index: int) -> Optional[Tuple[torch.Tensor, int]]:
        """Video j with the randomness of sample (epoch, index); None when no frame of j is readable."""
        rec = self.records[j]
        if rec.num_frames <= 0:
            return None
        if self.train:
            rng_s = sample_rng(self.seed, epoch, index, SAMPLING_STREAM)
            rng_a = sample_rng(self.seed, epoch, index, AUGMENT_STREAM)
            idx = train_indices(self.sampling, rec.num_frames, self.num_frames, self.stride, rng_s)   # (T,)
            p = draw_train_params(rng_a, self.train_short_side, self.flip, self.color_jitter_prob)
            got = self._read_frames(j, list(idx), min_short=p.short_side)
            if got is None:
                return None
            frames, bad = got
            return train_clip(frames, p, self.crop_size, self.mean, self.std), bad              # (T, 3, c, c)
        clips = eval_indices(self.sampling, rec.num_frames, self.num_frames, self.stride, self.clips)  # (n, T)
        uniq, inv = np.unique(clips, return_inverse=True)
        got = self._read_frames(j, [int(u) for u in uniq], min_short=self.test_short_side)
        if got is None:
            return None
        frames, bad = got
        video = eval_views(frames, inv.reshape(clips.shape), self.test_short_side, self.crop_size, self.crops,
                           self.mean, self.std)                                                # (V, T, 3, c, c)
        return video, bad

    def frame_key(self, rec: VideoRecord, i: int) -> str:
        return f"{rec.path}/{self.frame_format.format(i)}"

    def _read_frames(self, j: int, indices: List[int], min_short: int):
        """Decoded frames for 1-based `indices` of video j (bad ones replaced), and the number replaced."""
        rec = self.records[j]
        decoded: Dict[int, Optional[np.ndarray]] = {}
        self._fetch(rec, sorted(set(indices)), decoded, min_short)
        bad = [i for i in indices if decoded[i] is None]
        if not bad:
            return [decoded[i] for i in indices], 0
        for i in sorted(set(bad)):
            if self._nearest(rec, i, decoded, min_short) is None:
                return None
        self._bad_frames += len(bad)
        self._videos_bad.add(j)
        self._check_fraction()
        return [decoded[i] if decoded[i] is not None else self._nearest(rec, i, decoded, min_short)
                for i in indices], len(bad)

    def _fetch(self, rec: VideoRecord, indices: List[int], decoded: dict, min_short: int) -> None:
        keys = [self.frame_key(rec, i) for i in indices]
        for pos, data in self.store.iter_many(keys, self.io_workers):   # decode each frame as it arrives
            i, k = indices[pos], keys[pos]
            if isinstance(data, Exception):
                if not isinstance(data, FileNotFoundError):
                    raise data
                self._note_bad(k, "missing")
                decoded[i] = None
                continue
            try:
                decoded[i] = decode_rgb(data, min_short)
            except DecodeError as e:
                self._note_bad(k, f"corrupt ({e})")
                decoded[i] = None

    def _nearest(self, rec: VideoRecord, i: int, decoded: dict, min_short: int) -> Optional[np.ndarray]:
        """The readable frame closest to i (previous first on a tie), probing io_workers frames at a time."""
        order = []
        for d in range(1, rec.num_frames):
            order += [c for c in (i - d, i + d) if 1 <= c <= rec.num_frames]
        for pos, c in enumerate(order):
            if c not in decoded:
                batch = [x for x in order[pos:pos + 4 * max(self.io_workers, 1)] if x not in decoded]
                self._fetch(rec, batch[:max(self.io_workers, 1)], decoded, min_short)
            if decoded[c] is not None:
                return decoded[c]
        return None

    # --- bad-input bookkeeping --------------------------------------------------------------------------------
    def _note_bad(self, key: str, reason: str) -> None:
        url = self.store.url(key)
        if url not in self._bad_files:
            if len(self._bad_files) < 1000:
                self._bad_files[url] = reason
            log.warning("%s: %s frame %s", self.name or "data", reason.split(" ")[0], url)

    def _mark_unreadable(self, j: int) -> None:
        url = self.store.url(self.records[j].path)
        self._unreadable[j] = url
        log.warning("%s: no readable frame in %s (%d listed); substituting the next video",
                    self.name or "data", url, self.records[j].num_frames)
        self._check_fraction()

    def _check_fraction(self) -> None:
        affected = len(self._videos_bad | set(self._unreadable))
        if affected > self.max_bad_fraction * len(self.records):
            files = [f"{u} ({r})" for u, r in list(self._bad_files.items())[:10]]
            files += [f"{u} (no readable frame)" for u in list(self._unreadable.values())[:10]]
            raise BadDataError(
                f"{self.name or 'dataset'}: {affected} of {len(self.records)} videos have missing/corrupt frames "
                f"(more than max_bad_fraction={self.max_bad_fraction}); first files:\n  " + "\n  ".join(files))
