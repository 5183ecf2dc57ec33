"""Where a video's frames come from: a folder of JPEGs (one object per frame) or a frame pack (one object per
video, its JPEGs back to back, located by a per-split index).

A reader turns (video, frames wanted) into *requests*: each is one read (a whole frame object, or one byte
range of a pack) plus how to cut the frames out of its bytes. A request is named by a hashable key, so the
dataset's read-ahead and its reads agree on what is in flight. Both readers give the dataset the same bytes
for the same frame, so clips are identical whichever layout `data.root` holds (tests/test_data_packs.py).

Pack layout (written by `python -m msca.data.pack`):
    <root>/msca-packs.json                 marker, written last: the tree is complete
    <root>/<video path>.pack               frame 1, 2, ... F JPEG bytes back to back
    <root>/<list path>                     the list files, unchanged
    <root>/<list path>.packindex           npz: paths, first frame row per video, sizes, crc32 per frame
A frame of size 0 was missing from the folder: it reads as missing, exactly like the folder does.
"""

from __future__ import annotations

import io
import json
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from msca.data.lists import VideoRecord, frame_name_format
from msca.storage import Store, is_remote

MARKER = "msca-packs.json"
PACK_SUFFIX = ".pack"
INDEX_SUFFIX = ".packindex"
FORMAT = "msca-frame-packs"
VERSION = 1
# Ranged reads of an S3 pack: two wanted frames closer than this are fetched in one GET with the bytes between
# them; the clip's remaining ranges go out in one multi-range request that obstore fetches concurrently. Dense
# clips (frames a few apart) become one GET; an 8x32 clip (~8 of ~225 frames of its ~11 MiB span) stays 8 exact
# ranges: measured with `python -m msca.bench data --pack-gaps 0,16777216`, one GET for the span moved 28x the
# bytes and gave 0.38x local clips/s against 0.58x for exact ranges (see the issue-19 note). 16 MiB: one GET.
S3_GAP_BYTES = 256 * 1024


class PackMismatchError(ValueError):
    """A pack's bytes disagree with its index (a stale or partly rewritten pack): re-run the packer."""


def pack_key(video_path: str) -> str:
    return f"{video_path.rstrip('/')}{PACK_SUFFIX}"


def index_key(list_key: str) -> str:
    return f"{list_key}{INDEX_SUFFIX}"


def is_pack_root(store: Store) -> bool:
    return store.exists(MARKER)


# --- index -------------------------------------------------------------------------------------------------------
class PackIndex:
    """Offsets and checksums of every frame of every video of one split; loaded once, shared by loader workers:
    the arrays live in shared memory (Kinetics: ~70 M frames, ~560 MB), so spawned workers (see
    `msca.storage.worker_context`) get handles to them, not copies, and forked ones have no refcounts to copy."""

    def __init__(self, paths: Sequence[str], first: np.ndarray, sizes: np.ndarray, crcs: np.ndarray, source: str):
        self._shared = {  # torch tensors in shared memory: multiprocessing pickles them as handles
            "first": torch.from_numpy(np.ascontiguousarray(first, dtype=np.int64)).share_memory_(),  # (V+1,)
            "sizes": torch.from_numpy(np.ascontiguousarray(sizes, dtype=np.uint32).view(np.int32)).share_memory_(),
            "crcs": torch.from_numpy(np.ascontiguousarray(crcs, dtype=np.uint32).view(np.int32)).share_memory_(),
        }
        self.source = source
        self._row = {p: v for v, p in enumerate(paths)}
        self._views()

    def _views(self) -> None:
        self.first = self._shared["first"].numpy()  # (V+1,) row of each video's first frame
        self.sizes = self._shared["sizes"].numpy().view(np.uint32)  # (N,) bytes of each frame (0: missing)
        self.crcs = self._shared["crcs"].numpy().view(np.uint32)  # (N,) crc32 of each frame

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("first", "sizes", "crcs")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._views()

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        names = "\n".join(sorted(self._row, key=self._row.get)).encode()
        np.savez(buf, paths=np.frombuffer(names, dtype=np.uint8), first=self.first, sizes=self.sizes, crcs=self.crcs)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> "PackIndex":
        try:
            z = np.load(io.BytesIO(data))
            names = z["paths"].tobytes().decode()
            idx = cls(names.split("\n") if names else [], z["first"], z["sizes"], z["crcs"], source)
        except (ValueError, KeyError, OSError, EOFError, UnicodeDecodeError) as e:
            raise PackMismatchError(
                f"{source}: not a readable pack index ({e}); re-run python -m msca.data.pack"
            ) from None
        if len(idx.first) != len(idx._row) + 1 or idx.first[-1] != len(idx.sizes) or len(idx.crcs) != len(idx.sizes):
            raise PackMismatchError(f"{source}: pack index arrays disagree; re-run python -m msca.data.pack")
        return idx

    def video(self, path: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(offsets (F+1,) int64, crcs (F,)) of a video's frames 1..F, or None if the index lacks it."""
        v = self._row.get(path.strip("/"))
        if v is None:
            return None
        a, b = int(self.first[v]), int(self.first[v + 1])
        sizes = self.sizes[a:b].astype(np.int64)
        return np.concatenate([[0], np.cumsum(sizes)]), self.crcs[a:b]


def coalesce(offsets: np.ndarray, frames: Sequence[int], gap: int) -> List[Tuple[int, int, List[int]]]:
    """(start, end, frames) byte ranges covering the wanted 1-based `frames` (present ones only): frames whose
    gap is at most `gap` bytes share a range."""
    spans: List[Tuple[int, int, List[int]]] = []
    for i in sorted(set(frames)):
        lo, hi = int(offsets[i - 1]), int(offsets[i])
        if spans and lo - spans[-1][1] <= gap:
            spans[-1] = (spans[-1][0], hi, spans[-1][2] + [i])
        else:
            spans.append((lo, hi, [i]))
    return spans


# --- readers -----------------------------------------------------------------------------------------------------
class FolderFrames:
    """One object per frame: `<video path>/<frame_format % i>`."""

    layout = "folders"

    def __init__(self, store: Store, frame_format: str):
        self.store, self.frame_format = store, frame_name_format(frame_format)

    def key(self, rec: VideoRecord, i: int) -> str:
        return f"{rec.path}/{self.frame_format.format(i)}"

    def url(self, rec: VideoRecord, i: int) -> str:
        return self.store.url(self.key(rec, i))

    def requests(self, rec: VideoRecord, frames: Sequence[int]):
        """([(request key, [frames])], frames known missing without a read)."""
        return [(("f", self.key(rec, i), i), [i]) for i in dict.fromkeys(frames)], []

    @staticmethod
    def gets(rk) -> int:
        return 1

    def submit(self, rk, io_workers: int):
        return self.store.submit_read(rk[1], io_workers)

    def split(self, rec: VideoRecord, rk, data: bytes) -> Dict[int, bytes]:
        return {rk[2]: data}


class PackFrames:
    """One object per video; a clip's frames come from as few ranged reads as `gap` allows."""

    layout = "packs"

    multi = True  # several ranges of a clip in one request (the store fetches them concurrently)

    def __init__(self, store: Store, index: PackIndex, gap: int):
        self.store, self.index, self.gap = store, index, int(gap)

    def url(self, rec: VideoRecord, i: int) -> str:
        return f"{self.store.url(pack_key(rec.path))} frame {i}"

    def requests(self, rec: VideoRecord, frames: Sequence[int]):
        entry = self.index.video(rec.path)
        if entry is None:
            raise PackMismatchError(
                f"{self.index.source}: no entry for video {rec.path!r} of the list; the pack index is from another "
                f"list: re-run python -m msca.data.pack"
            )
        offsets, _ = entry
        n = len(offsets) - 1
        present = [i for i in frames if 1 <= i <= n and offsets[i] > offsets[i - 1]]
        missing = [i for i in dict.fromkeys(frames) if i not in present]
        spans = coalesce(offsets, present, self.gap)
        if (
            len(spans) > 1 and self.multi
        ):  # one request of several ranges, fetched concurrently by the store (obstore on S3)
            return [
                (("m", rec.path, tuple((lo, hi) for lo, hi, _ in spans)), [i for *_, f in spans for i in f])
            ], missing
        return [(("p", rec.path, lo, hi), fr) for lo, hi, fr in spans], missing

    @staticmethod
    def gets(rk) -> int:
        """GETs a request costs (ranges of a multi-range request)."""
        return len(rk[2]) if rk[0] == "m" else 1

    def submit(self, rk, io_workers: int):
        if rk[0] == "m":
            return self.store.submit_read_ranges(pack_key(rk[1]), rk[2], io_workers)
        return self.store.submit_read_range(pack_key(rk[1]), rk[2], rk[3], io_workers)

    def split(self, rec: VideoRecord, rk, data) -> Dict[int, bytes]:
        """The frames of one request, each checked against the index's size and crc32."""
        if rk[0] == "m":
            out: Dict[int, bytes] = {}
            for (lo, hi), part in zip(rk[2], data):
                out.update(self._split(rec, lo, hi, part))
            return out
        return self._split(rec, rk[2], rk[3], data)

    def _split(self, rec: VideoRecord, lo: int, hi: int, data: bytes) -> Dict[int, bytes]:
        offsets, crcs = self.index.video(rec.path)
        if len(data) != hi - lo:
            raise PackMismatchError(
                f"{self.store.url(pack_key(rec.path))}: the index says bytes {lo}-{hi} but the pack has "
                f"{'only ' + str(lo + len(data)) if len(data) < hi - lo else 'other'} bytes: pack and index of video "
                f"{rec.path!r} disagree; re-run python -m msca.data.pack"
            )
        out = {}
        for i in range(1, len(offsets)):
            a, b = int(offsets[i - 1]), int(offsets[i])
            if a >= lo and b <= hi and b > a:
                frame = data[a - lo : b - lo]
                if zlib.crc32(frame) != int(crcs[i - 1]):
                    raise PackMismatchError(
                        f"{self.store.url(pack_key(rec.path))}: frame {i} does not match its checksum in "
                        f"{self.index.source}: pack and index of video {rec.path!r} disagree; re-run "
                        f"python -m msca.data.pack"
                    )
                out[i] = frame
            if a >= hi:
                break
        return out


def read_frame(reader, rec: VideoRecord, i: int) -> bytes:
    """Frame i's bytes, read now (a launch's data check); FileNotFoundError when it is missing."""
    reqs, _ = reader.requests(rec, [i])
    if not reqs:
        raise FileNotFoundError(reader.url(rec, i))
    data = reader.submit(reqs[0][0], 1).result()
    if isinstance(data, Exception):
        raise data
    return reader.split(rec, reqs[0][0], data)[i]


def open_frames(store: Store, list_key: Optional[str], frame_format: str, gap: Optional[int] = None):
    """The reader for `store`'s layout: packs when the pack marker is there (their index next to the list,
    `list_key` relative to the root), else frame folders."""
    if not is_pack_root(store):
        return FolderFrames(store, frame_format)
    meta = json.loads(store.read_text(MARKER))
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
        raise PackMismatchError(f"{store.url(MARKER)}: not a frame-pack tree this version reads ({meta})")
    if list_key is None:
        raise ValueError(
            f"{store.uri} holds frame packs: its list files must be given relative to it (their index sits next "
            f"to them)"
        )
    ik = index_key(list_key)
    try:
        data = store.read_bytes(ik)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{store.url(ik)}: no pack index for list {list_key} (pack it: python -m msca.data.pack SRC "
            f"{store.uri} --list {list_key})"
        ) from None
    if gap is None:
        gap = S3_GAP_BYTES if is_remote(store.uri) else 0
    return PackFrames(store, PackIndex.from_bytes(data, store.url(ik)), gap)
