"""Kinetics-style frame folders (local or s3://) -> clips, exactly as the original samples them.

    ds = build_dataset(cfg.data, "train", seed=cfg.seed)          # VideoClipDataset
    sampler = ResumableDistributedSampler(len(ds), rank, world, seed=cfg.seed)
    sampler.set_epoch(epoch, start=consumed)                      # resume mid-epoch
    loader = build_loader(ds, sampler, cfg.data.batch_size, cfg.data.num_workers, drop_last=True)

Modules: `lists` (list files), `sampling` (clip indices), `decode` (JPEG), `transforms` (clip-consistent
augmentation), `dataset`, `sampler`, `loader`, `synthetic` (the embedded default dataset), `config`.
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import fields
from typing import Sequence, Tuple

from msca.data.config import DataConfig, SyntheticConfig
from msca.data.dataset import BadDataError, VideoClipDataset
from msca.data.decode import DecodeError, decode_rgb
from msca.data.frames import FolderFrames, PackFrames, PackMismatchError, read_frame
from msca.data.frames import open_frames as frames_reader
from msca.data.lists import (
    ListFormatError,
    VideoRecord,
    check_labels,
    class_names_from_folders,
    parse_class_names,
    parse_list,
)
from msca.data.loader import build_loader, collate_clips
from msca.data.sampler import ResumableDistributedSampler
from msca.data.transforms import to_model_input
from msca.storage import Store, is_remote, open_store

log = logging.getLogger(__name__)

__all__ = [
    "DataConfig",
    "SyntheticConfig",
    "VideoClipDataset",
    "ResumableDistributedSampler",
    "build_dataset",
    "build_loader",
    "collate_clips",
    "to_model_input",
    "BadDataError",
    "PackMismatchError",
    "FolderFrames",
    "PackFrames",
    "ListFormatError",
    "VideoRecord",
    "open_list",
    "check_data",
]


def _resolve(root: Store, path: str, endpoint_url=None) -> Tuple[Store, str]:
    """A list path relative to the root, or an absolute path / s3:// URI: (store, key)."""
    if is_remote(path) or os.path.isabs(path):
        parent, name = posixpath.split(path.rstrip("/")) if is_remote(path) else os.path.split(path)
        return open_store(parent, endpoint_url=endpoint_url if is_remote(path) else None), name
    return root, path


def _list_path(cfg: DataConfig, split: str) -> str:
    return {"train": cfg.train_list, "val": cfg.val_list, "test": cfg.test_list or cfg.val_list}[split]


def open_frames(cfg: DataConfig, split: str, store: Store):
    """The frame reader for data.root's layout (frame folders or frame packs, detected)."""
    path = _list_path(cfg, split)
    relative = not (is_remote(path) or os.path.isabs(path))
    return frames_reader(store, path if relative else None, cfg.frame_format, cfg.pack_gap_bytes)


def open_list(cfg: DataConfig, split: str):
    """(frame store, parsed VideoList, class names or None) for a split; a label outside the classes fails
    here, naming its file:line."""
    store = open_store(cfg.root, endpoint_url=cfg.endpoint_url)
    path = _list_path(cfg, split)
    lst_store, key = _resolve(store, path, cfg.endpoint_url)
    try:
        text = lst_store.read_text(key)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{split} list not found: {e} (data.root={cfg.root}, list={path})") from None
    vl = parse_list(text, source=lst_store.url(key), use_subset=cfg.use_subset)
    names, classes_from = vl.class_names, "the list's class-name labels"
    if names is None:
        classes_key = posixpath.join(posixpath.dirname(key), "classes.txt")
        if lst_store.exists(classes_key):
            names, classes_from = parse_class_names(lst_store.read_text(classes_key)), lst_store.url(classes_key)
        else:
            names, classes_from = class_names_from_folders(vl.records), "the class folders"
    if names:
        check_labels(vl, len(names), classes_from)
    return store, vl, names


def check_data(cfg: DataConfig, splits: Sequence[str]) -> None:
    """What a launch checks before it writes anything: the data root exists; each split's list exists, parses
    and has labels in range; the first frame of its first video decodes. A synthetic set that is not there yet
    is skipped (the job generates it); one generated with other settings is refused."""
    if not is_remote(cfg.root) and not os.path.isdir(cfg.root) and cfg.synthetic is None:
        raise FileNotFoundError(
            f"data.root={cfg.root} does not exist on this machine (set data.root, or the "
            f"variable its config reads, to the dataset's folder or s3:// URI)"
        )
    if cfg.synthetic is not None:
        from msca.data.synthetic import TRAIN_LIST, VAL_LIST, check_generated_with

        store = open_store(cfg.root, endpoint_url=cfg.endpoint_url)
        if not (store.exists(TRAIN_LIST) and store.exists(VAL_LIST)):
            return
        check_generated_with(
            store, SyntheticConfig(**{f.name: getattr(cfg.synthetic, f.name) for f in fields(SyntheticConfig)})
        )
    for split in dict.fromkeys(splits):
        store, vl, _ = open_list(cfg, split)
        if not vl.records:
            raise ValueError(f"{vl.source}: the {split} list is empty")
        check_first_frame(store, vl, cfg, open_frames(cfg, split, store))


def check_first_frame(store: Store, vl, cfg: DataConfig, frames=None) -> None:
    """The first video's first frame exists under data.root with data.frame_format's name (or in its pack)
    and decodes: catches a wrong root, frame naming or list prefix before any job starts."""
    frames = frames or FolderFrames(store, cfg.frame_format)
    rec = vl.records[0]
    try:
        data = read_frame(frames, rec, 1)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{vl.where(0)}: the video's first frame {frames.url(rec, 1)} does not exist (check "
            f"data.root={cfg.root} and data.frame_format={cfg.frame_format!r})"
        ) from None
    try:
        decode_rgb(data)
    except DecodeError as err:
        raise ValueError(
            f"{frames.url(rec, 1)} (first frame of {vl.where(0)}) is not a readable image: {err}"
        ) from None


def build_dataset(cfg: DataConfig, split: str, seed: int = 0, uint8: bool = False) -> VideoClipDataset:
    """train: one random clip + train augmentation per item; val: `val_clips` x `test_crops` views;
    test: `test_clips` x `test_crops` views. With `cfg.synthetic` set, the dataset is generated at `cfg.root`
    first if its list files are missing (idempotent, safe across ranks). `uint8`: clips are not normalised
    (`to_model_input` does it on the device)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    if cfg.synthetic is not None:
        from msca.data.synthetic import ensure_synthetic

        syn = SyntheticConfig(**{f.name: getattr(cfg.synthetic, f.name) for f in fields(SyntheticConfig)})
        ensure_synthetic(open_store(cfg.root, endpoint_url=cfg.endpoint_url), syn, cfg.frame_format)
    store, vl, names = open_list(cfg, split)
    if not vl.records:
        raise ValueError(f"{vl.source}: the {split} list is empty")
    frames = open_frames(cfg, split, store)
    num_classes = len(names) if names else None
    train = split == "train"
    return VideoClipDataset(
        store,
        vl.records,
        train=train,
        frame_format=cfg.frame_format,
        num_frames=cfg.num_frames,
        stride=cfg.stride,
        sampling=cfg.sampling,
        crop_size=cfg.crop_size,
        train_short_side=tuple(cfg.train_short_side),
        test_short_side=cfg.test_short_side,
        clips=cfg.test_clips if split == "test" else cfg.val_clips,
        crops=cfg.test_crops,
        flip=cfg.flip,
        color_jitter_prob=cfg.color_jitter_prob,
        mean=cfg.mean,
        std=cfg.std,
        seed=seed,
        max_bad_fraction=cfg.max_bad_fraction,
        io_workers=cfg.io_workers,
        class_names=names,
        num_classes=num_classes,
        name=f"{cfg.name}/{split}",
        frames=frames,
        uint8=uint8,
    )
