"""Train-pipeline throughput: clips/s for 8x32 clips of 331-short-side JPEGs, ours vs the original's PIL way.

    python -m msca.bench data                      # local disk and S3 (a SeaweedFS started for the run), 1 core
    python -m msca.bench data --workers 0,2        # also with 2 DataLoader workers (unpinned)
    python -m msca.bench data --s3-endpoint http://host:8333 --s3-uri s3://bucket/prefix   # an existing server

Pipelines, interleaved round by round so machine noise hits all alike, on the same (epoch, index) items:
  pil-baseline  the original's per-frame PIL path: open -> convert RGB -> flip -> BICUBIC resize of the full
                frame -> crop -> colour jitter (torchvision's PIL ops) -> to tensor -> normalize, from local disk
  msca local    VideoClipDataset on a local directory (decode.py + transforms.py)
  msca s3       the same dataset read through the Store from S3 (one GET per frame)
  local packs   the same clips from frame packs (`python -m msca.data.pack`) on local disk
  s3 packs      the same clips from frame packs on S3 (coalesced ranged GETs: one per clip by default)
Colour jitter runs with the training default (each op p=0.1, --jitter), with the same parameters in all three.
All go through `build_loader` (batches of --batch clips; our dataset's `__getitems__` fetches a batch's
frames concurrently). workers=0 loads in this process pinned to one core (the per-core number); workers=N
uses N loader processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from msca.bench.seeds import provenance
from msca.data.dataset import VideoClipDataset
from msca.data.decode import decoder_name
from msca.data.frames import open_frames
from msca.data.lists import VideoRecord, format_list
from msca.data.loader import build_loader
from msca.data.pack import pack
from msca.data.sampling import AUGMENT_STREAM, SAMPLING_STREAM, dense_train_indices, sample_rng
from msca.data.synthetic import _texture_spectrum, encode_jpeg
from msca.data.transforms import describe, draw_train_params, resized_size
from msca.storage import open_store

log = logging.getLogger(__name__)
T, STRIDE, CROP, SHORT = 8, 32, 224, (224, 330)


# --- data -------------------------------------------------------------------------------------------------------
def make_videos(out: Path, videos: int, frames: int, h: int, w: int, quality: int, seed: int = 0) -> list:
    """Kinetics-like frame folders: a smooth textured scene panning, with per-frame sensor noise; 4:2:0 JPEGs
    of ~40 KiB at 331x440 q90 (the texture is made at half size and upscaled, like natural video)."""
    rng = np.random.default_rng(seed)
    noise = [rng.normal(0, 1.0, (h, w, 3)).astype(np.float32) for _ in range(7)]
    records = []
    for v in range(videos):
        hh, ww = -(-h // 2), -(-w // 2)
        tex = np.fft.irfft2(np.moveaxis(_texture_spectrum(rng, hh, ww), -1, 0), s=(hh, ww)).transpose(1, 2, 0)
        tex = Image.fromarray(np.clip(tex, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        tex = np.asarray(tex).astype(np.float32)
        vy, vx = rng.uniform(-2, 2, size=2)
        path = f"frames331_train/class{v % 4}/video{v:03d}"
        (out / path).mkdir(parents=True, exist_ok=True)
        for i in range(frames):
            f = np.roll(tex, (int(vy * i), int(vx * i)), axis=(0, 1)) + noise[i % len(noise)]
            (out / path / f"img_{i + 1:05d}.jpg").write_bytes(encode_jpeg(np.clip(f, 0, 255).astype(np.uint8), quality))
        records.append(VideoRecord(path, frames, v % 4))
    (out / "train.txt").write_text(format_list(records))
    return records


# --- the original's PIL pipeline, for comparison ---------------------------------------------------------------
class PilBaseline(torch.utils.data.Dataset):
    """Same clips and parameters as VideoClipDataset(train=True), computed frame by frame with PIL."""

    def __init__(self, root: str, records, seed: int = 0, jitter: float = 0.1):
        self.root, self.records, self.seed, self.jitter = root, records, seed, jitter

    def __len__(self):
        return len(self.records)

    def __getitem__(self, item):
        epoch, index = item
        rec = self.records[index]
        idx = dense_train_indices(rec.num_frames, T, STRIDE, sample_rng(self.seed, epoch, index, SAMPLING_STREAM))
        p = draw_train_params(sample_rng(self.seed, epoch, index, AUGMENT_STREAM), SHORT, True, self.jitter)
        out = []
        for i in idx:
            img = Image.open(os.path.join(self.root, rec.path, f"img_{i:05d}.jpg")).convert("RGB")
            if p.flip:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            w, h = img.size
            nh, nw = resized_size(h, w, p.short_side)
            img = img.resize((nw, nh), Image.BICUBIC)
            oy, ox = int(p.crop_fy * (nh - CROP + 1)), int(p.crop_fx * (nw - CROP + 1))
            img = img.crop((ox, oy, ox + CROP, oy + CROP))
            img = _pil_jitter(img, p)
            x = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).contiguous().float().div(255)
            out.append((x - 0.5) / 0.5)  # (3, 224, 224)
        return {"video": torch.stack(out), "label": rec.label, "index": index}  # (T, 3, 224, 224)


def _pil_jitter(img: Image.Image, p) -> Image.Image:
    """torchvision.transforms.functional's PIL colour ops, as the original's Train_ClipAug applies them."""
    from PIL import ImageEnhance

    if p.brightness is not None:
        img = ImageEnhance.Brightness(img).enhance(p.brightness)
    if p.saturation is not None:
        img = ImageEnhance.Color(img).enhance(p.saturation)
    if p.gamma is not None:
        img = img.point([int((255 + 1 - 1e-3) * pow(v / 255.0, p.gamma)) for v in range(256)] * 3)
    if p.hue is not None:
        h, s, v = img.convert("HSV").split()
        hh = (np.asarray(h).astype(np.int16) + int(p.hue * 255)) % 256
        img = Image.merge("HSV", (Image.fromarray(hh.astype(np.uint8), "L"), s, v)).convert("RGB")
    return img


def _no_jitter(p) -> bool:
    return p.brightness is None and p.saturation is None and p.gamma is None and p.hue is None


class _Items(torch.utils.data.Sampler):
    """A sampler whose items are replaced each round (persistent workers re-iterate it)."""

    def __init__(self):
        self.items = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self):
        return len(self.items)


# --- S3 server ----------------------------------------------------------------------------------------------------
def _free_base() -> int:
    for base in np.random.default_rng(os.getpid()).integers(20000, 45000, 100):
        ok = True
        for off in list(range(9)) + [10008]:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", int(base) + off))
                except OSError:
                    ok = False
                    break
        if ok:
            return int(base)
    raise RuntimeError("no free ports for SeaweedFS")


def start_seaweedfs(workdir: Path, cpus: str = "") -> dict:
    script = Path(__file__).resolve().parents[2] / "infra" / "seaweedfs.sh"
    if not script.exists():
        raise RuntimeError(f"{script} not found: pass --s3-endpoint/--s3-uri, or --no-s3")
    port = _free_base()
    env = dict(os.environ, SEAWEEDFS_PORT=str(port), PYTHON=sys.executable, SEAWEEDFS_CPUS=cpus)
    r = subprocess.run(["bash", str(script), "start", str(workdir)], env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"SeaweedFS did not start:\n{r.stderr}")
    return {
        "script": script,
        "dir": workdir,
        "endpoint": f"http://127.0.0.1:{port}",
        "key": "devkey",
        "secret": "devsecret123",
    }


# --- measurement ----------------------------------------------------------------------------------------------------
def run(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m msca.bench data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--frames", type=int, default=300, help="frames per video (>= 256 so 8x32 clips do not wrap)")
    ap.add_argument("--height", type=int, default=331)
    ap.add_argument("--width", type=int, default=440)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--clips", type=int, default=24, help="clips per pipeline per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", default="0", help="comma list of DataLoader worker counts (0: this process)")
    ap.add_argument("--batch", type=int, default=4, help="clips per DataLoader batch")
    ap.add_argument("--jitter", type=float, default=0.1, help="colour jitter probability per op (all pipelines)")
    ap.add_argument("--io-workers", type=int, default=8, help="concurrent frame reads per clip")
    ap.add_argument("--read-ahead", type=int, default=1, help="batches read ahead when loading in-process")
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument(
        "--pack-gaps", default="", help="comma list of data.pack_gap_bytes to try on S3 besides the default"
    )
    ap.add_argument("--s3-endpoint", default=None)
    ap.add_argument("--s3-uri", default=None, help="existing s3://bucket/prefix to upload to (default: new bucket)")
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir, removed at the end)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory(prefix="msca-bench-data-", dir=a.dir)
    work = Path(tmp.name)
    server = None
    try:
        t0 = time.time()
        records = make_videos(work / "frames", a.videos, a.frames, a.height, a.width, a.quality)
        nbytes = sum(p.stat().st_size for p in (work / "frames").rglob("*.jpg"))
        print(
            f"data: {a.videos} videos x {a.frames} frames of {a.height}x{a.width} JPEG q{a.quality} "
            f"(mean {nbytes / a.videos / a.frames / 1024:.0f} KiB), made in {time.time() - t0:.1f}s"
        )
        local = open_store(str(work / "frames"))
        pipelines = {"pil-baseline": PilBaseline(str(work / "frames"), records, jitter=a.jitter)}
        ds_kw = dict(
            train=True,
            num_frames=T,
            stride=STRIDE,
            crop_size=CROP,
            train_short_side=SHORT,
            color_jitter_prob=a.jitter,
            io_workers=a.io_workers,
        )
        pipelines["msca local"] = VideoClipDataset(local, records, **ds_kw)
        lists = ["train.txt"]
        packer = {}
        t0 = time.time()
        packer["local"] = pack(local, open_store(str(work / "packs")), lists, "img_{:05d}.jpg", progress=False)
        pipelines["local packs"] = _pack_dataset(open_store(str(work / "packs")), records, ds_kw)
        if not a.no_s3:
            if a.s3_endpoint:
                s3 = open_store(a.s3_uri, endpoint_url=a.s3_endpoint)
            else:
                # the server stands in for a remote one: keep it off the core the client is pinned to
                others = sorted(os.sched_getaffinity(0))[1:]
                server = start_seaweedfs(work / "seaweedfs", ",".join(map(str, others)))
                os.environ.update(AWS_ACCESS_KEY_ID=server["key"], AWS_SECRET_ACCESS_KEY=server["secret"])
                bucket = f"bench-{uuid.uuid4().hex[:8]}"
                s3 = open_store(f"s3://{bucket}/k400", endpoint_url=server["endpoint"])
                s3.conn.client().create_bucket(Bucket=bucket)
            t0 = time.time()
            s3.write_many([(k, local.read_bytes(k)) for k in local.list()], max_workers=16)
            print(f"uploaded to {s3.uri} in {time.time() - t0:.1f}s")
            pipelines["msca s3"] = VideoClipDataset(s3, records, **ds_kw)
            s3p = s3.child("packs")
            packer["s3"] = pack(local, s3p, lists, "img_{:05d}.jpg", progress=False)
            pipelines["s3 packs"] = _pack_dataset(s3p, records, ds_kw)
            for g in [g for g in a.pack_gaps.split(",") if g]:  # other read strategies, same packs
                gap, single = int(g.rstrip("s")), g.endswith("s")  # "0s": each range its own request
                ds = pipelines[f"s3 packs {_size(gap)}{'s' if single else ''}"] = _pack_dataset(
                    s3p, records, ds_kw, gap
                )
                ds.frames.multi = not single
        for where, out in packer.items():
            print(f"packer -> {where}: {out['videos_per_s']:.1f} videos/s ({out['bytes'] / 2**20:.0f} MiB)")

        # fidelity: same item through ours and PIL (an item with no colour jitter drawn)
        plain = next(
            (
                (0, i)
                for i in range(len(records))
                if _no_jitter(draw_train_params(sample_rng(0, 0, i, AUGMENT_STREAM), SHORT, True, a.jitter))
            ),
            (0, 0),
        )
        ref, ours = pipelines["pil-baseline"][plain]["video"], pipelines["msca local"][plain]["video"]
        diff = (ref - ours).abs() * 127.5
        print(f"ours vs PIL on the same clip: mean |diff| {diff.mean():.3f}, max {diff.max():.1f} (0..255 scale)")
        print(f"decoder: {decoder_name()}; resize: {describe()}")

        results = []
        n = len(records)
        for workers in [int(w) for w in a.workers.split(",")]:
            allowed = sorted(os.sched_getaffinity(0))
            if workers == 0:  # every thread of this process (obstore's runtime threads too) on one core
                for tid in os.listdir("/proc/self/task"):
                    os.sched_setaffinity(int(tid), {allowed[0]})
            samplers = {name: _Items() for name in pipelines}
            loaders = {
                name: build_loader(ds, samplers[name], batch_size=a.batch, num_workers=workers, read_ahead=a.read_ahead)
                for name, ds in pipelines.items()
            }
            requests = {name: 0 for name in pipelines}
            rates = {name: [] for name in pipelines}
            cpu_rates = {name: [] for name in pipelines}
            for r in range(a.rounds + 1):  # round 0 warms caches, workers and connections
                items = [(r, i % n) for i in range(r * a.clips, (r + 1) * a.clips)]
                for name in pipelines:
                    samplers[name].items = items
                    c0, t0 = _cpu_seconds(loaders[name], workers), time.perf_counter()
                    for _ in loaders[name]:
                        pass
                    wall, cpu = time.perf_counter() - t0, _cpu_seconds(loaders[name], workers) - c0
                    if r:
                        requests[name] += _requests(pipelines[name], items)
                        rates[name].append(len(items) / wall)
                        cpu_rates[name].append(len(items) / max(cpu, 1e-9))
            if workers == 0:
                for tid in os.listdir("/proc/self/task"):
                    os.sched_setaffinity(int(tid), set(allowed))
            del loaders
            for name, rs in rates.items():
                results.append(
                    {
                        "pipeline": name,
                        "workers": workers,
                        "clips_per_s": statistics.median(rs),
                        "clips_per_cpu_s": statistics.median(cpu_rates[name]),
                        "spread": [round(min(rs), 1), round(max(rs), 1)],
                        "requests_per_clip": requests[name] / (a.rounds * a.clips),
                    }
                )
        print("\n" + report(results))
        if a.json:  # `python -m msca.bench readme --data-json` makes README's data section from it
            notes = [
                f"packer -> {w}: {o['videos_per_s']:.1f} videos/s ({o['bytes'] / 2**20:.0f} MiB)"
                for w, o in packer.items()
            ]
            setup = f"{a.videos} videos x {a.frames} frames of {a.height}x{a.width} JPEG q{a.quality}"
            setup += f", {a.clips} clips x {a.rounds} rounds, batch {a.batch}"
            Path(a.json).write_text(
                json.dumps({"results": results, "notes": notes, "setup": setup, "provenance": provenance()}, indent=1)
            )
        return {"results": results}
    finally:
        if server:
            subprocess.run(
                ["bash", str(server["script"]), "stop", str(server["dir"])],
                capture_output=True,
                env=dict(os.environ, SEAWEEDFS_STOP_TIMEOUT="5"),
            )
        tmp.cleanup()


def _size(n: int) -> str:
    return f"gap={n >> 20}M" if n >= 1 << 20 else f"gap={n >> 10}K"


def _pack_dataset(store, records, ds_kw, gap=None) -> VideoClipDataset:
    frames = open_frames(store, "train.txt", "img_{:05d}.jpg", gap)
    return VideoClipDataset(store, records, frames=frames, **ds_kw)


def _requests(ds, items) -> int:
    """Reads (GETs on S3) the dataset issues for `items`: from its reader's plan, so nothing is instrumented."""
    if not isinstance(ds, VideoClipDataset):
        return T * len(items)  # the PIL baseline opens every frame
    n = 0
    for epoch, index in items:
        need = ds._plan(index, epoch, index)[0]
        n += sum(ds.frames.gets(rk) for rk, _ in ds.frames.requests(ds.records[index], need)[0])
    return n


def _cpu_seconds(loader, workers: int) -> float:
    """CPU time spent loading: this process (workers=0) or the loader's worker processes (from /proc)."""
    if workers == 0:
        return time.process_time()
    it = getattr(loader, "_iterator", None)
    total = 0.0
    for w in getattr(it, "_workers", []) or []:
        try:
            fields = Path(f"/proc/{w.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def report(results: list) -> str:
    """The table. Wall-clock clips/s is the target metric; clips per CPU-second of the loading processes is
    shown too, since on a shared machine other jobs take wall time from any pipeline."""
    lines = [
        f"{'pipeline':<17} {'workers':>7} {'clips/s':>8} {'frames/s':>9} {'range':>12} {'vs PIL':>7} "
        f"{'vs local':>8} {'clips/cpu-s':>11} {'vs local':>8} {'GET/clip':>8}"
    ]
    for r in results:
        same = {x["pipeline"]: x for x in results if x["workers"] == r["workers"]}
        vs_pil = r["clips_per_s"] / same["pil-baseline"]["clips_per_s"]
        vs_local = r["clips_per_s"] / same["msca local"]["clips_per_s"]
        cpu_vs_local = r["clips_per_cpu_s"] / same["msca local"]["clips_per_cpu_s"]
        lo, hi = r["spread"]
        lines.append(
            f"{r['pipeline']:<17} {r['workers']:>7} {r['clips_per_s']:>8.1f} {r['clips_per_s'] * T:>9.0f} "
            f"{f'{lo}-{hi}':>12} {vs_pil:>6.2f}x {vs_local:>7.2f}x {r['clips_per_cpu_s']:>11.1f} "
            f"{cpu_vs_local:>7.2f}x {r.get('requests_per_clip', 0):>8.1f}"
        )
    lines.append(
        "(workers=0: one process pinned to one core; targets: msca local >= 2x pil-baseline, "
        "msca s3 >= 0.9x msca local per cpu-s, s3 packs >= 0.95x msca local clips/s with >= 8x fewer GETs per clip)"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
