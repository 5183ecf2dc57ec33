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
  * once the videos affected (bad frames or skipped) exceed `max_bad_fraction` of the list, counted over
    the main process and all its loader workers together (a bitmap of the list in shared memory, made before
    the workers start), `BadDataError` is raised naming the files this process saw; and over the whole run,
    every rank's bitmap merged at each logged step (`check_run_wide`, called by the trainer).
Other storage errors (credentials, missing bucket, network after retries) are raised, never counted.
Counters live in the process that loads: `stats` in the main process sees only `num_workers=0` loading;
every sample also carries its own `bad_frames` / `skipped` counts, which the collate returns per batch.

Throughput: the DataLoader calls `__getitems__` with a whole batch; every frame of every clip is requested at
once (`Store.iter_many`, `io_workers` threads), decoded as it arrives, and each clip is transformed as soon as
its frames are in, so storage latency overlaps decoding. `prefetch(items)` starts the next batch's reads early
(`build_loader` does this when loading in the main process). None of this changes a single output value.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import as_completed
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from msca.data.decode import DecodeError, decode_rgb
from msca.data.frames import FolderFrames, PackFrames
from msca.data.lists import VideoRecord, frame_name_format
from msca.data.sampling import AUGMENT_STREAM, SAMPLING_STREAM, eval_indices, sample_rng, train_indices
from msca.data.transforms import draw_train_params, eval_views, train_clip
from msca.storage import Store, is_remote

log = logging.getLogger(__name__)


class BadDataError(RuntimeError):
    """Too many unreadable frames/videos (past `max_bad_fraction`), or none readable at all."""


class VideoClipDataset(Dataset):
    """Train: one random clip per item, (T, 3, crop, crop). Eval: `clips` x `crops` views,
    (V, T, 3, crop, crop) with view v = clip k * crops + crop j."""

    RETRY_DELAYS = (0.2, 1.0)  # seconds before re-reading frames an object store said were missing

    def __init__(
        self,
        store: Store,
        records: Sequence[VideoRecord],
        *,
        train: bool,
        frame_format: str = "img_{:05d}.jpg",
        num_frames: int = 8,
        stride: int = 32,
        sampling: str = "dense",
        crop_size: int = 224,
        train_short_side: Sequence[int] = (224, 330),
        test_short_side: int = 224,
        clips: int = 1,
        crops: int = 3,
        flip: bool = True,
        color_jitter_prob: float = 0.1,
        mean: float = 0.5,
        std: float = 0.5,
        seed: int = 0,
        max_bad_fraction: float = 0.01,
        io_workers: int = 8,
        class_names: Optional[List[str]] = None,
        num_classes: Optional[int] = None,
        name: str = "",
        frames: Optional[Union[FolderFrames, PackFrames]] = None,
        uint8: bool = False,
    ):
        if sampling not in ("dense", "uniform"):
            raise ValueError(f"sampling must be 'dense' or 'uniform', got {sampling!r}")
        if train and train_short_side[0] < crop_size:
            raise ValueError(f"train_short_side {list(train_short_side)} starts below crop_size {crop_size}")
        if not train and test_short_side < crop_size:
            raise ValueError(f"test_short_side {test_short_side} is smaller than crop_size {crop_size}")
        frame_format = frame_name_format(frame_format)  # fails early on a bad pattern
        self.store, self.records, self.train = store, list(records), train
        self.frame_format, self.num_frames, self.stride, self.sampling = frame_format, num_frames, stride, sampling
        self.crop_size, self.test_short_side = crop_size, test_short_side
        self.train_short_side = tuple(train_short_side)
        self.clips, self.crops, self.flip, self.color_jitter_prob = clips, crops, flip, color_jitter_prob
        self.mean, self.std, self.seed = mean, std, seed
        self.max_bad_fraction, self.io_workers = max_bad_fraction, io_workers
        self.class_names = class_names
        self.num_classes = (
            num_classes
            if num_classes is not None
            else (len(class_names) if class_names else max((r.label for r in self.records), default=-1) + 1)
        )
        self.name = name
        self.uint8 = uint8  # clips left unnormalised: the trainer normalises them on the device
        self.frames = frames if frames is not None else FolderFrames(store, frame_format)  # folders or packs
        self.epoch = 0
        # per-process bad-input bookkeeping
        self._bad_frames = 0
        self._bad_files: Dict[str, str] = {}  # url -> reason (first few hundred)
        self._videos_bad: set = set()  # list indices with >= 1 replaced frame
        # affected videos of this rank's loading, shared by its loader workers: (V,) uint8, 1 = affected
        self._affected = torch.zeros(len(self.records), dtype=torch.uint8).share_memory_()
        self._unreadable: Dict[int, str] = {}  # list index -> video url
        self._ahead: dict = {}  # frame key -> future of its bytes (read-ahead)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_ahead"] = {}  # futures belong to this process's threads
        return state

    # --- Dataset API ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used when an item is a plain int (the sampler passes (epoch, index) tuples instead)."""
        self.epoch = int(epoch)

    def __getitem__(self, item: Union[int, Tuple[int, int]]) -> dict:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: Sequence) -> List[dict]:
        """A batch of samples (the DataLoader calls this when defined). The frames of every clip in the batch
        are fetched concurrently and each is decoded as it arrives, so storage latency hides behind decoding."""
        keys = [(int(it[0]), int(it[1])) if isinstance(it, (tuple, list)) else (self.epoch, int(it)) for it in items]
        n = len(self.records)
        for _, index in keys:
            if not 0 <= index < n:
                raise IndexError(f"index {index} out of range for {n} videos")
        plans = [self._plan(index, epoch, index) if index not in self._unreadable else None for epoch, index in keys]
        flat = [(b, i) for b, pl in enumerate(plans) if pl for i in pl[0]]
        decoded = [dict() for _ in plans]
        results: list = [None] * len(keys)
        pending = [len(pl[0]) if pl else 0 for pl in plans]

        def arrived(b):  # a clip whose frames are all in is transformed while the rest download
            pending[b] -= 1
            if pending[b] == 0 and all(v is not None for v in decoded[b].values()):
                results[b] = self._finish(keys[b][1], plans[b], decoded[b])

        if flat:
            self._fetch_into(
                [(self.records[keys[b][1]], i) for b, i in flat],
                [(decoded[b], i) for b, i in flat],
                [plans[b][1] for b, _ in flat],
                on_frame=[lambda b=b: arrived(b) for b, _ in flat],
            )
        out = []
        for b, (epoch, index) in enumerate(keys):
            res = results[b]
            if res is None and plans[b]:
                res = self._finish(index, plans[b], decoded[b])  # bad frames: replaced here
            if res is None:
                res = self._substitute(epoch, index)
            video, bad, j = res
            out.append(
                {
                    "video": video,
                    "label": self.records[j].label,
                    "index": index,
                    "bad_frames": bad,
                    "skipped": int(j != index),
                }
            )
        return out

    def prefetch(self, items: Sequence) -> None:
        """Start downloading the frames of `items` (e.g. the next batch) so they arrive while the current
        batch decodes. Only bytes are read ahead; results are identical with or without it."""
        if len(self._ahead) > 1024:  # unconsumed read-ahead (a loop left early): drop it
            self._ahead.clear()
        for it in items:
            epoch, index = (int(it[0]), int(it[1])) if isinstance(it, (tuple, list)) else (self.epoch, int(it))
            plan = self._plan(index, epoch, index) if index not in self._unreadable else None
            if plan:
                for rk, _ in self.frames.requests(self.records[index], plan[0])[0]:
                    if rk not in self._ahead:
                        self._ahead[rk] = self.frames.submit(rk, self.io_workers)

    @property
    def stats(self) -> dict:
        """This process's counts of replaced frames and skipped videos, with the first offending files."""
        return {
            "bad_frames": self._bad_frames,
            "videos_with_bad_frames": len(self._videos_bad),
            "videos_skipped": len(self._unreadable),
            "bad_files": list(self._bad_files)[:20],
        }

    # --- loading: plan (which frames, which parameters) -> fetch + decode -> finish (transform) ---------------
    def _plan(self, j: int, epoch: int, index: int):
        """(1-based frames to read, min decoded short side, transform) for video j with the randomness of
        sample (epoch, index); None if the list says j has no frames."""
        rec = self.records[j]
        if rec.num_frames <= 0:
            return None
        if self.train:
            rng_s = sample_rng(self.seed, epoch, index, SAMPLING_STREAM)
            rng_a = sample_rng(self.seed, epoch, index, AUGMENT_STREAM)
            idx = train_indices(self.sampling, rec.num_frames, self.num_frames, self.stride, rng_s)  # (T,)
            p = draw_train_params(rng_a, self.train_short_side, self.flip, self.color_jitter_prob)
            return (
                sorted(set(int(i) for i in idx)),
                p.short_side,
                lambda fr: train_clip([fr[int(i)] for i in idx], p, self.crop_size, self.mean, self.std, self.uint8),
            )
        clips = eval_indices(self.sampling, rec.num_frames, self.num_frames, self.stride, self.clips)  # (n, T)
        uniq, inv = np.unique(clips, return_inverse=True)
        return (
            [int(u) for u in uniq],
            self.test_short_side,
            lambda fr: eval_views(
                [fr[int(u)] for u in uniq],
                inv.reshape(clips.shape),
                self.test_short_side,
                self.crop_size,
                self.crops,
                self.mean,
                self.std,
                self.uint8,
            ),
        )  # (V, T, 3, c, c)

    def _finish(self, j: int, plan, decoded: dict):
        """(video, frames replaced, j), or None when no frame of video j is readable."""
        need, min_short, transform = plan
        bad = [i for i in need if decoded.get(i) is None]
        if bad:
            rec = self.records[j]
            repl = {i: self._nearest(rec, i, decoded, min_short) for i in bad}  # from readable frames only
            if any(r is None for r in repl.values()):
                return None
            decoded.update(repl)
            self._bad_frames += len(bad)
            self._videos_bad.add(j)
            self._check_fraction()
        return transform(decoded), len(bad), j

    def _substitute(self, epoch: int, index: int):
        """Video `index` is unreadable: the next readable video in list order, with (epoch, index) randomness."""
        n = len(self.records)
        for step in range(n):
            j = (index + step) % n
            if j in self._unreadable:
                continue
            plan = self._plan(j, epoch, index)
            if plan is not None:
                decoded: dict = {}
                self._fetch(self.records[j], plan[0], decoded, plan[1])
                res = self._finish(j, plan, decoded)
                if res is not None:
                    return res
            self._mark_unreadable(j)
        raise BadDataError(
            f"{self.name or 'dataset'}: no readable video among {n} (e.g. "
            f"{', '.join(list(self._unreadable.values())[:5])})"
        )

    def _fetch(self, rec: VideoRecord, indices: List[int], decoded: dict, min_short: int) -> None:
        """Read and decode frames `indices` of one video into `decoded` (None for a missing/corrupt frame)."""
        self._fetch_into([(rec, i) for i in indices], [(decoded, i) for i in indices], [min_short] * len(indices))

    def _fetch_into(self, frames, targets, min_shorts, on_frame=None) -> None:
        """Read (record, frame index) pairs concurrently; decode each into targets[pos] = (dict, index) as it
        arrives (None if missing/corrupt), then call on_frame[pos]().

        On an object store, a frame the list says exists but that reads as missing (404) is read again
        (RETRY_DELAYS) before it counts as bad: a store under load or in a restart can answer 404 for an object
        it holds. (Transient errors are retried inside the store; a filesystem's answer is final.)"""
        where: Dict[tuple, List[int]] = {}  # (video path, frame) -> positions wanting it
        recs: Dict[str, VideoRecord] = {}
        for pos, (rec, i) in enumerate(frames):
            where.setdefault((rec.path, i), []).append(pos)
            recs[rec.path] = rec
        wanted: Dict[str, List[int]] = {}
        for path, i in where:
            wanted.setdefault(path, []).append(i)
        failed: Dict[tuple, str] = {}  # (path, frame) -> reason, after the last try
        delays = self.RETRY_DELAYS if is_remote(self.store.uri) else ()
        for attempt in range(len(delays) + 1):
            if attempt:
                time.sleep(delays[attempt - 1])
            last = attempt == len(delays)
            bad = self._read_frames(recs, wanted, where, targets, min_shorts, on_frame, last, failed)
            if not bad:
                break
            wanted = {}
            for path, i in bad:
                wanted.setdefault(path, []).append(i)
        for (path, i), reason in failed.items():
            self._note_bad(self.frames.url(recs[path], i), reason)

    def _read_frames(self, recs, wanted, where, targets, min_shorts, on_frame, last, failed) -> list:
        """One round of reads for {path: frames}; returns the (path, frame) pairs that were missing/corrupt
        (delivered as None to their targets only when `last`)."""
        futures, known_missing = {}, []
        for path, idx in wanted.items():
            reqs, missing = self.frames.requests(recs[path], idx)
            known_missing += [(path, i) for i in missing]
            for rk, _ in reqs:
                fut = self._ahead.pop(rk, None) or self.frames.submit(rk, self.io_workers)
                futures[fut] = (path, rk, _)
        bad = []

        def deliver(path, i, data, reason=None):
            for pos in where[(path, i)]:
                target, j = targets[pos]
                value = None
                if data is not None:
                    try:
                        value = decode_rgb(data, min_shorts[pos])
                    except DecodeError as e:
                        reason = f"corrupt ({e})"
                if value is None and reason == "missing" and not last:
                    bad.append((path, i))
                    return
                if value is None:
                    failed[(path, i)] = reason or "missing"
                target[j] = value
                if on_frame is not None:
                    on_frame[pos]()

        for path, i in known_missing:  # absent from a pack's index: the packer found no such frame
            for pos in where[(path, i)]:
                targets[pos][0][targets[pos][1]] = None
                failed[(path, i)] = "missing"
                if on_frame is not None:
                    on_frame[pos]()
        for fut in as_completed(futures):  # decode on arrival
            path, rk, wanted_frames = futures[fut]
            data = fut.result()
            if isinstance(data, Exception):
                if not isinstance(data, FileNotFoundError):
                    raise data
                for i in wanted_frames:
                    deliver(path, i, None, "missing")
                continue
            parts = self.frames.split(recs[path], rk, data)
            for i in wanted_frames:
                deliver(path, i, parts.get(i))
        return list(dict.fromkeys(bad))

    def _nearest(self, rec: VideoRecord, i: int, decoded: dict, min_short: int) -> Optional[np.ndarray]:
        """The readable frame closest to i (previous first on a tie), probing io_workers frames at a time."""
        order = []
        for d in range(1, rec.num_frames):
            order += [c for c in (i - d, i + d) if 1 <= c <= rec.num_frames]
        probed = dict(decoded)  # extra probes stay local to this search
        for pos, c in enumerate(order):
            if c not in probed:
                batch = [x for x in order[pos : pos + 4 * max(self.io_workers, 1)] if x not in probed]
                self._fetch(rec, batch[: max(self.io_workers, 1)], probed, min_short)
            if probed[c] is not None:
                return probed[c]
        return None

    # --- bad-input bookkeeping --------------------------------------------------------------------------------
    def _note_bad(self, url: str, reason: str) -> None:
        if url not in self._bad_files:
            if len(self._bad_files) < 1000:
                self._bad_files[url] = reason
            log.warning("%s: %s frame %s", self.name or "data", reason.split(" ")[0], url)

    def _mark_unreadable(self, j: int) -> None:
        url = self.store.url(self.records[j].path)
        self._unreadable[j] = url
        log.warning(
            "%s: no readable frame in %s (%d listed); substituting the next video",
            self.name or "data",
            url,
            self.records[j].num_frames,
        )
        self._check_fraction()

    def check_run_wide(self, affected: torch.Tensor, ranks: int) -> None:
        """The threshold over every rank: `affected` is the union of all ranks' bitmaps (msca.runtime.dist.union).
        Each rank's own warnings named its files; the error says where they are."""
        count = int(affected.sum())
        if count > self.max_bad_fraction * len(self.records):
            mine = [f"{u} ({r})" for u, r in list(self._bad_files.items())[:5]]
            raise BadDataError(
                f"{self.name or 'dataset'}: {count} of {len(self.records)} videos have missing/corrupt frames over "
                f"all {ranks} ranks (more than max_bad_fraction={self.max_bad_fraction}); each rank's log names its "
                f"files" + (f"; this rank's first: {', '.join(mine)}" if mine else "")
            )

    def affected(self) -> torch.Tensor:
        """(V,) uint8: 1 for each video this rank's loading (main process and loader workers) found bad."""
        return self._affected

    def _check_fraction(self) -> None:
        mine = self._videos_bad | set(self._unreadable)
        if mine:
            self._affected[torch.as_tensor(sorted(mine), dtype=torch.long)] = 1
        affected = max(int(self._affected.sum()), len(mine))
        if affected > self.max_bad_fraction * len(self.records):
            files = [f"{u} ({r})" for u, r in list(self._bad_files.items())[:10]]
            files += [f"{u} (no readable frame)" for u in list(self._unreadable.values())[:10]]
            raise BadDataError(
                f"{self.name or 'dataset'}: {affected} of {len(self.records)} videos have missing/corrupt frames "
                f"(more than max_bad_fraction={self.max_bad_fraction}); first files:\n  " + "\n  ".join(files)
            )
