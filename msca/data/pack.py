"""Frame folders -> frame packs: one object per video and a per-split index, so a clip is one ranged read.

    python -m msca.data.pack SRC DST [--list trainValTest/train.txt --list trainValTest/val.txt]
                                     [--frame-format img_{:05d}.jpg] [--workers 8] [--endpoint-url URL]

SRC and DST are local folders or s3:// URIs. The list files (and a classes.txt next to them) are copied
unchanged; DST then works as `data.root` exactly like SRC (same clips, bit for bit). See `frames.py` for the
layout.

Resumable and idempotent: videos are packed in chunks, and each finished chunk leaves a small journal entry in
DST/.packing/ (keyed by the chunk's video names), so a re-run skips finished chunks. Every pack is read back
and compared (size and sha256) before its chunk counts as done. The marker `msca-packs.json` is written last:
a tree without it is read as folders, never as half a pack tree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Sequence

import numpy as np

from msca.data.frames import FORMAT, MARKER, VERSION, PackIndex, index_key, pack_key
from msca.data.lists import frame_name_format, parse_list
from msca.storage import Store, open_store

log = logging.getLogger(__name__)
CHUNK = 32  # videos per journal entry
JOURNAL = ".packing"


def frame_number_pattern(frame_format: str) -> re.Pattern:
    """`img_{:05d}.jpg` -> a regex whose group 1 is the frame number of a file name."""
    fmt = frame_name_format(frame_format)
    pre, _, rest = fmt.partition("{")
    post = rest.partition("}")[2]
    return re.compile(re.escape(pre) + r"(\d+)" + re.escape(post) + r"$")


def pack_video(src: Store, dst: Store, path: str, frame_format: str, pattern: re.Pattern) -> dict:
    """Pack one frame folder (frames 1..highest found; a gap is a size-0 frame); returns its index entry."""
    fmt = frame_name_format(frame_format)
    found = {}
    for key in src.list(path):
        name = key[len(path) + 1 :]  # keys are relative to SRC's root
        m = pattern.match(name)
        if m and "/" not in name and fmt.format(int(m.group(1))) == name:
            found[int(m.group(1))] = name
    n = max(found, default=0)
    keys = [f"{path}/{found[i]}" for i in range(1, n + 1) if i in found]
    data = dict(zip([i for i in range(1, n + 1) if i in found], src.read_many(keys, max_workers=8)))
    for d in data.values():
        if isinstance(d, Exception):
            raise d
    frames = [data.get(i, b"") for i in range(1, n + 1)]
    blob = b"".join(frames)
    dst.write_bytes(pack_key(path), blob)
    back = dst.read_bytes(pack_key(path))  # verify what was written
    if len(back) != len(blob) or hashlib.sha256(back).digest() != hashlib.sha256(blob).digest():
        raise OSError(
            f"{dst.url(pack_key(path))}: read back {len(back)} bytes that differ from the {len(blob)} written"
        )
    return {"sizes": [len(f) for f in frames], "crcs": [zlib.crc32(f) for f in frames], "bytes": len(blob)}


def _chunk_key(paths: Sequence[str]) -> str:
    return f"{JOURNAL}/{hashlib.sha1(chr(10).join(paths).encode()).hexdigest()[:20]}.json"


def pack(
    src: Store, dst: Store, lists: Sequence[str], frame_format: str, workers: int = 8, progress: bool = True
) -> dict:
    """Pack every video of `lists` (keys relative to SRC) from `src` into `dst`; returns a summary."""
    t0 = time.monotonic()
    texts = {lk: src.read_text(lk) for lk in lists}
    parsed = {lk: parse_list(texts[lk], source=src.url(lk)) for lk in lists}
    paths = list(dict.fromkeys(r.path for vl in parsed.values() for r in vl.records))
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    pattern = frame_number_pattern(frame_format)
    entries: Dict[str, dict] = {}
    todo = []
    for ch in chunks:
        try:
            entries.update(json.loads(dst.read_text(_chunk_key(ch))))
        except FileNotFoundError:
            todo.append(ch)
    done_before = len(entries)
    bar = _bar(len(paths), done_before, progress)
    packed_bytes = 0

    def run_chunk(ch: List[str]) -> dict:
        out = {}
        for p in ch:
            out[p] = pack_video(src, dst, p, frame_format, pattern)
            bar.update(1)
        dst.write_text(_chunk_key(ch), json.dumps(out))  # the chunk is done only once all its packs verified
        return out

    with ThreadPoolExecutor(max(1, workers)) as ex:
        for out in ex.map(run_chunk, todo):
            entries.update(out)
            packed_bytes += sum(e["bytes"] for e in out.values())
    bar.close()
    for lk, vl in parsed.items():
        vids = list(dict.fromkeys(r.path for r in vl.records))
        sizes = [entries[p]["sizes"] for p in vids]
        first = np.concatenate([[0], np.cumsum([len(s) for s in sizes])]).astype(np.int64)
        flat = np.array([x for s in sizes for x in s], dtype=np.uint32)
        crcs = np.array([x for p in vids for x in entries[p]["crcs"]], dtype=np.uint32)
        idx = PackIndex(vids, first, flat, crcs, dst.url(index_key(lk)))
        data = idx.to_bytes()
        dst.write_bytes(index_key(lk), data)
        PackIndex.from_bytes(dst.read_bytes(index_key(lk)), dst.url(index_key(lk)))  # verify it loads
        dst.write_text(lk, texts[lk])
        classes = f"{lk.rsplit('/', 1)[0]}/classes.txt" if "/" in lk else "classes.txt"
        if src.exists(classes):
            dst.write_bytes(classes, src.read_bytes(classes))
    meta = {"format": FORMAT, "version": VERSION, "source": src.uri, "lists": list(lists), "frame_format": frame_format}
    dst.write_text(MARKER, json.dumps(meta, indent=1))
    secs = time.monotonic() - t0
    packed = len(paths) - done_before
    return {
        "videos": len(paths),
        "packed": packed,
        "skipped_done": done_before,
        "bytes": packed_bytes,
        "seconds": secs,
        "videos_per_s": packed / secs if secs > 0 else 0.0,
    }


def _bar(total: int, initial: int, enabled: bool):
    try:
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="video", disable=not enabled, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm comes with the project's dependencies
        return _NoBar()


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m msca.data.pack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("src", help="frame-folder tree: a folder or s3://bucket/prefix")
    ap.add_argument("dst", help="where the packs go: a folder or s3://bucket/prefix")
    ap.add_argument("--list", action="append", dest="lists", help="list file relative to SRC (repeatable)")
    ap.add_argument("--frame-format", default="img_{:05d}.jpg")
    ap.add_argument("--workers", type=int, default=8, help="chunks packed at once")
    ap.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint for s3:// SRC/DST")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    lists = a.lists or ["trainValTest/train.txt", "trainValTest/val.txt"]
    try:
        src = open_store(a.src, endpoint_url=a.endpoint_url)
        dst = open_store(a.dst, endpoint_url=a.endpoint_url)
        for lk in lists:
            if not src.exists(lk):
                raise FileNotFoundError(f"{src.url(lk)}: no such list file (pass --list PATH relative to {a.src})")
        out = pack(src, dst, lists, a.frame_format, a.workers, progress=not a.no_progress)
    except (OSError, LookupError, ValueError) as e:
        print(f"msca.data.pack: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(
        f"packed {out['packed']} videos ({out['skipped_done']} already done) of {out['videos']} into {dst.uri}: "
        f"{out['bytes'] / 2**20:.1f} MiB in {out['seconds']:.1f}s, {out['videos_per_s']:.1f} videos/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
