"""A Kinetics-layout dataset of generated videos whose class is *motion*, not appearance.

    python -m msca.data.synthetic OUT --classes 4 --videos-per-class 24 [--val-videos-per-class 8] ...
    (OUT: a local directory or s3://bucket/prefix)

Two kinds (`SyntheticConfig.kind`), both with a class that is *only* visible across time:

hue (the default): the texture's colours cycle around the colour wheel (a rotation of each pixel's chroma about
the grey axis). Class pair j turns at (2j+1) * hue_speed turns per frame, forwards for even c and backwards for
odd c, from a uniformly random starting hue, while the texture itself drifts in a random, class-independent
direction. Every single frame has the same distribution in every class (uniform hue); a clip of one direction
is a time-reversed clip of the other. A tiny MSCA learns it in a few hundred steps on a CPU; a frame-wise ViT
stays at chance.

scroll: every video is a random, doubly periodic colour texture (filtered noise plus soft-edged blobs and bars)
scrolling over the frame. Class c sets the *vertical* velocity: class pair j = c // 2 moves at (2j+1) * speed
pixels per frame, down for even c and up for odd c. Every video also drifts horizontally at a random
class-independent velocity in [-speed, speed] (a nuisance), and starts at a uniformly random phase.

Why a frame-wise model cannot beat chance: the texture is stationary and the phase uniform, so every single
frame has the same distribution in every class; a clip of class "up" is exactly a time-reversed clip of class
"down" (same unordered set of frames). Only the direction and speed of motion across time tell classes apart.
Vertical motion keeps classes invariant under the horizontal-flip augmentation. To avoid aliasing, sample with
`stride * (2 * (classes // 2) - 1) * speed` well below height / 2 (e.g. 8 x 4 clips of 32-frame videos).

Layout (the same as Kinetics frame folders + TokShift/MSCA list files, MSCA comma format, integer labels):
    frames_train/<class>/<video>/img_00001.jpg ...   frames_val/<class>/<video>/...
    trainValTest/train.txt, val.txt ("path,frame_count,label"), trainValTest/classes.txt, synthetic.json
The list files are written last: their presence marks a complete dataset.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict
from typing import List, Optional

import numpy as np

from msca.data.config import SyntheticConfig
from msca.data.lists import VideoRecord, format_list, frame_name_format
from msca.storage import LocalStore, Store, open_store

log = logging.getLogger(__name__)

TRAIN_LIST, VAL_LIST, CLASSES = "trainValTest/train.txt", "trainValTest/val.txt", "trainValTest/classes.txt"


def class_velocity(c: int, speed: float) -> float:
    """Vertical pixels per frame of class c (+ is down)."""
    return (2 * (c // 2) + 1) * speed * (1 if c % 2 == 0 else -1)


def class_names(n: int, speed: float = 1.0) -> List[str]:
    return [f"{'down' if class_velocity(c, speed) > 0 else 'up'}_{abs(class_velocity(c, speed)):g}px" for c in range(n)]


def hue_class_names(n: int, hue_speed: float) -> List[str]:
    return [
        f"hue_{'fwd' if hue_velocity(c, hue_speed) > 0 else 'back'}_{abs(hue_velocity(c, hue_speed)):g}"
        for c in range(n)
    ]


def _texture_spectrum(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """rfft2 of one random periodic RGB texture, (h, w//2+1, 3) complex."""
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    k = np.sqrt(kx**2 + ky**2)
    k0 = rng.uniform(0.04, 0.12)  # dominant scale varies per video
    spec = np.fft.rfft2(rng.standard_normal((h, w, 3)), axes=(0, 1)) / (1 + (k / k0) ** 2)[..., None]
    tex = np.fft.irfft2(spec, s=(h, w), axes=(0, 1))
    tex = tex / (tex.std(axis=(0, 1), keepdims=True) + 1e-8) * rng.uniform(25, 45)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    for _ in range(int(rng.integers(3, 7))):  # soft-edged blobs and bars on the torus
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        dy = (yy - cy + h / 2) % h - h / 2
        dx = (xx - cx + w / 2) % w - w / 2
        ry, rx = rng.uniform(3, h / 4), rng.uniform(3, w / 4)
        if rng.random() < 0.5:
            d = np.sqrt((dy / ry) ** 2 + (dx / rx) ** 2)
        else:
            d = np.maximum(np.abs(dy) / ry, np.abs(dx) / rx)
        mask = 1.0 / (1.0 + np.exp((d - 1.0) * 8.0))
        tex += mask[..., None] * rng.uniform(-90, 90, size=3)
    tex += rng.uniform(70, 180, size=3)
    return np.fft.rfft2(tex, axes=(0, 1))


def render_video(rng: np.random.Generator, frames: int, h: int, w: int, vy: float, vx: float) -> np.ndarray:
    """(frames, h, w, 3) uint8: the texture shifted by (phase + t * (vy, vx)), sub-pixel via a Fourier shift."""
    spec = np.moveaxis(_texture_spectrum(rng, h, w), -1, 0).astype(np.complex64)  # (3, h, w//2+1)
    py, px = rng.uniform(0, h), rng.uniform(0, w)
    t = np.arange(frames)[:, None]
    sy = np.exp(-2j * np.pi * np.fft.fftfreq(h)[None, :] * (py + vy * t)).astype(np.complex64)  # (frames, h)
    sx = np.exp(-2j * np.pi * np.fft.rfftfreq(w)[None, :] * (px + vx * t)).astype(np.complex64)  # (frames, w//2+1)
    shifted = spec[None] * (sy[:, None, :, None] * sx[:, None, None, :])  # (frames, 3, h, w//2+1)
    video = np.fft.irfft2(shifted, s=(h, w)).transpose(0, 2, 3, 1)  # (frames, h, w, 3)
    video += rng.standard_normal(size=video.shape, dtype=np.float32) * 2.0  # sensor noise: no two frames alike
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)


def hue_velocity(c: int, hue_speed: float) -> float:
    """Turns per frame of class c's colour cycling (+ is forwards)."""
    return (2 * (c // 2) + 1) * hue_speed * (1 if c % 2 == 0 else -1)


def rotate_chroma(video: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """Rotate each frame's colours about the grey axis: video (F, h, w, 3) float, turns (F,) -> (F, h, w, 3)."""
    k = np.full(3, 1 / np.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    theta = 2 * np.pi * turns[:, None, None]  # (F, 1, 1)
    rot = np.cos(theta) * np.eye(3) + np.sin(theta) * cross + (1 - np.cos(theta)) * np.outer(k, k)  # (F, 3, 3)
    return np.einsum("fhwc,fdc->fhwd", video, rot)


def render_hue_video(
    rng: np.random.Generator, frames: int, h: int, w: int, turns_per_frame: float, drift: float
) -> np.ndarray:
    """(frames, h, w, 3) uint8: a drifting texture whose hue cycles at `turns_per_frame` from a random phase."""
    angle = rng.uniform(0, 2 * np.pi)
    tex = render_video(rng, frames, h, w, drift * np.sin(angle), drift * np.cos(angle)).astype(np.float32)
    grey = tex.mean(axis=-1, keepdims=True)  # (F, h, w, 1)
    chroma = tex - grey
    chroma *= 60.0 / (chroma.std() + 1e-6)  # saturated enough that hue is well defined
    turns = rng.uniform(0, 1) + turns_per_frame * np.arange(frames)
    return np.clip(np.rint(grey + rotate_chroma(chroma, turns)), 0, 255).astype(np.uint8)


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    """(h, w, 3) uint8 -> JPEG bytes, 4:2:0 like ffmpeg-extracted frames."""
    try:
        import simplejpeg

        return simplejpeg.encode_jpeg(
            np.ascontiguousarray(frame), quality=quality, colorspace="RGB", colorsubsampling="420"
        )
    except ImportError:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality, subsampling=2)
        return buf.getvalue()


def generate(store: Store, cfg: SyntheticConfig, frame_format: str = "img_{:05d}.jpg", io_workers: int = 16) -> dict:
    """Write the whole dataset under `store` (frames first, list files last). Deterministic in `cfg.seed`."""
    frame_format = frame_name_format(frame_format)
    t0 = time.time()
    if cfg.kind not in ("hue", "scroll"):
        raise ValueError(f"data.synthetic.kind={cfg.kind!r} is not one of ['hue', 'scroll']")
    names = class_names(cfg.classes, cfg.speed) if cfg.kind == "scroll" else hue_class_names(cfg.classes, cfg.hue_speed)
    lists = {}
    for split_id, (split, per_class) in enumerate((("train", cfg.videos_per_class), ("val", cfg.val_videos_per_class))):
        records = []
        for c in range(cfg.classes):
            for v in range(per_class):
                rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, split_id, c, v])))
                if cfg.kind == "hue":
                    video = render_hue_video(
                        rng,
                        cfg.frames,
                        cfg.height,
                        cfg.width,
                        hue_velocity(c, cfg.hue_speed),
                        rng.uniform(0, cfg.speed),
                    )
                else:
                    vx = rng.uniform(-cfg.speed, cfg.speed)
                    video = render_video(rng, cfg.frames, cfg.height, cfg.width, class_velocity(c, cfg.speed), vx)
                path = f"frames_{split}/{names[c]}/{split}_{c:03d}_{v:05d}"
                store.write_many(
                    [
                        (f"{path}/{frame_format.format(i + 1)}", encode_jpeg(f, cfg.quality))
                        for i, f in enumerate(video)
                    ],
                    max_workers=io_workers,
                )
                records.append(VideoRecord(path, cfg.frames, c))
        lists[split] = records
    store.write_text(
        "synthetic.json",
        json.dumps({"config": asdict(cfg), "frame_format": frame_format, "class_names": names}, indent=1),
    )
    store.write_text(CLASSES, "".join(f"{n}\n" for n in names))
    store.write_text(VAL_LIST, format_list(lists["val"]))
    store.write_text(TRAIN_LIST, format_list(lists["train"]))  # last: marks the dataset complete
    info = {
        "root": store.uri,
        "train_videos": len(lists["train"]),
        "val_videos": len(lists["val"]),
        "classes": names,
        "seconds": round(time.time() - t0, 2),
    }
    log.info("synthetic dataset written: %s", info)
    return info


def check_generated_with(store: Store, cfg: SyntheticConfig) -> None:
    """An existing set must have been generated with `cfg`: reusing one made with other settings would train on
    data that the run's config.yaml does not describe."""
    if not store.exists("synthetic.json"):
        return
    have = json.loads(store.read_text("synthetic.json")).get("config", {})
    diff = {k: (have.get(k), v) for k, v in asdict(cfg).items() if have.get(k) != v}
    if diff:
        pairs = ", ".join(f"data.synthetic.{k}={want!r} (found {got!r})" for k, (got, want) in sorted(diff.items()))
        raise ValueError(
            f"{store.uri} holds a synthetic set generated with other settings: {pairs}; "
            f"point data.root at another folder or delete that one"
        )


def ensure_synthetic(store: Store, cfg: SyntheticConfig, frame_format: str = "img_{:05d}.jpg") -> bool:
    """Generate the dataset at `store` unless its list files exist. Safe when several ranks call it at once:
    a local root is generated in a private temp dir and renamed into place (the loser discards its copy); on
    S3 every rank writes identical objects (deterministic generation) with the lists last. True if generated."""
    if store.exists(TRAIN_LIST) and store.exists(VAL_LIST):
        check_generated_with(store, cfg)
        return False
    if not isinstance(store, LocalStore):
        generate(store, cfg, frame_format)
        return True
    root = store.root
    parent = os.path.dirname(root.rstrip(os.sep)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(root)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        generate(LocalStore(tmp), cfg, frame_format)
        try:
            os.rename(tmp, root)  # atomic; also replaces an empty directory
            return True
        except OSError:
            pass
        # root exists and is not empty: move our entries in, the list folder last; skip what another rank moved
        for entry in sorted(os.listdir(tmp), key=lambda e: e == "trainValTest"):
            try:
                os.rename(os.path.join(tmp, entry), os.path.join(root, entry))
            except OSError:
                pass
        if not (store.exists(TRAIN_LIST) and store.exists(VAL_LIST)):
            raise RuntimeError(
                f"could not place the synthetic dataset in {root} (partly populated by something "
                f"else?); remove it or choose another data.root"
            )
        return True
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    d = SyntheticConfig()
    ap = argparse.ArgumentParser(prog="python -m msca.data.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="local directory or s3://bucket/prefix")
    ap.add_argument("--classes", type=int, default=d.classes)
    ap.add_argument("--videos-per-class", type=int, default=d.videos_per_class)
    ap.add_argument("--val-videos-per-class", type=int, default=d.val_videos_per_class)
    ap.add_argument("--frames", type=int, default=d.frames)
    ap.add_argument("--height", type=int, default=d.height)
    ap.add_argument("--width", type=int, default=d.width)
    ap.add_argument("--kind", default=d.kind, choices=["hue", "scroll"])
    ap.add_argument("--speed", type=float, default=d.speed, help="scroll: px/frame of the slowest class")
    ap.add_argument("--hue-speed", type=float, default=d.hue_speed, help="hue: turns/frame of the slowest class")
    ap.add_argument("--quality", type=int, default=d.quality)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--frame-format", default="img_{:05d}.jpg")
    ap.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (default: env / boto3)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = SyntheticConfig(
        classes=a.classes,
        videos_per_class=a.videos_per_class,
        val_videos_per_class=a.val_videos_per_class,
        frames=a.frames,
        height=a.height,
        width=a.width,
        kind=a.kind,
        speed=a.speed,
        hue_speed=a.hue_speed,
        quality=a.quality,
        seed=a.seed,
    )
    info = generate(open_store(a.out, endpoint_url=a.endpoint_url), cfg, a.frame_format)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
