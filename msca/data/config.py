"""Data configuration: one dataclass used directly as the Hydra structured-config schema.

Only OmegaConf-compatible field types (str, int, float, bool, Optional, List, nested dataclasses), so a typo in
a YAML override fails at compose time instead of deep inside a worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class SyntheticConfig:
    """How the embedded default dataset is generated when `DataConfig.root` lacks it (see `synthetic.py`).

    Defaults are small enough to generate in a few seconds on one CPU core. The motion is vertical, so the
    dense sampler's `stride * num_frames` should fit in `frames` and `stride * max speed` should stay well
    below `height / 2` (no aliasing on the wrapped texture).
    """

    classes: int = 4
    videos_per_class: int = 24
    val_videos_per_class: int = 8
    frames: int = 32
    height: int = 64
    width: int = 86
    kind: str = "hue"  # "hue": colour cycling forward/backward (default); "scroll": vertical motion
    speed: float = 1.0  # scroll: px/frame of the slowest class; class pair j moves at (2j+1)*speed
    hue_speed: float = 0.025  # hue: turns/frame of the slowest class; class pair j turns at (2j+1)*hue_speed.
    #                             With the default stride 4 that is 0.1 turns (36 deg) between sampled frames: at
    #                             0.04 turns the direction cue was so weak that training sat at chance for a
    #                             seed-dependent number of epochs (issue 7)
    quality: int = 90  # JPEG quality
    seed: int = 0


@dataclass
class DataConfig:
    """Where the frames are, how clips are sampled and augmented, and how they are batched."""

    name: str = "synthetic"  # "synthetic" | "k400" (informational)
    root: str = "???"  # frame repo: local dir or s3://bucket/prefix (list paths are relative to it)
    train_list: str = "trainValTest/train.txt"  # relative to root, or an absolute path / s3:// URI
    val_list: str = "trainValTest/val.txt"
    test_list: Optional[str] = None  # defaults to val_list
    frame_format: str = "img_{:05d}.jpg"  # 1-based frame index; the MSCA config uses "{:06d}.jpg"
    num_frames: int = 8  # T
    stride: int = 32  # dense sampling step between the T frames
    sampling: str = "dense"  # "dense" | "uniform" (TSN-style segments)
    crop_size: int = 224
    train_short_side: List[int] = field(default_factory=lambda: [224, 330])  # randint [lo, hi)
    test_short_side: int = 224
    val_clips: int = 1  # clips per video during training-time validation
    test_clips: int = 10  # clips per video at final evaluation
    test_crops: int = 3  # 1: centre; 3: centre, left, right
    flip: bool = True
    color_jitter_prob: float = 0.1  # per op (brightness, saturation, gamma, hue), as the original
    mean: float = 0.5
    std: float = 0.5
    batch_size: int = 8  # clips per rank per micro-step
    eval_batch_size: int = 2  # videos per rank at evaluation
    num_workers: int = 2
    io_workers: int = 8  # concurrent frame reads per clip (threads inside each loader worker)
    max_bad_fraction: float = 0.01  # of the list's videos that may have bad frames or be unreadable
    pack_gap_bytes: Optional[int] = None  # frame packs: wanted frames closer than this share one ranged read
    #                                       (None: 256 KiB on S3, 0 on a filesystem; msca/data/frames.py)
    endpoint_url: Optional[str] = None  # S3-compatible endpoint for root (None: env / boto3 default)
    use_subset: bool = False  # keep every 10th list line, as the original's USE_SUBSET
    synthetic: Optional[SyntheticConfig] = None  # set for the synthetic set: generate root if missing
