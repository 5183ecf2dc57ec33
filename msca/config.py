"""The run configuration's schema: dataclasses registered with Hydra so a typo or a wrong type fails at
compose time with the key named, long before a job reaches a cluster.

Groups (`configs/<group>/*.yaml`) fill these sections; `experiment/*` files are deltas over them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from msca.data.config import DataConfig
from msca.rules import above, at_least, check, within


@dataclass
class RunConfig:
    name: str = "???"  # the run's identity: its home is <store.root>/runs/<name>/
    job: str = "train"  # train | evaluate
    allow_config_change: bool = False  # re-launch an existing name with a different config
    check_data: bool = True  # launch reads the lists and a first frame; false if only compute nodes see the data
    variants: List[str] = field(default_factory=list)  # model presets to run side by side (comparisons)


@dataclass
class ModelConfig:
    arch: str = "msca_b16"  # a preset of msca.model.create_model
    name: str = "${model.arch}"  # label in logs and tables
    num_classes: Optional[int] = None  # None: from the dataset
    num_frames: int = "${data.num_frames}"  # type: ignore[assignment]
    img_size: int = "${data.crop_size}"  # type: ignore[assignment]
    patch_size: Optional[int] = None  # None: the preset's value (likewise below)
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    shift: Optional[str] = None
    shift_div: Optional[int] = None
    drop_path_rate: Optional[float] = None  # stochastic depth (0 in the original recipe)
    pretrained: Optional[str] = None  # .npz (Google jax ViT) or torch state dict; path or s3:// URI


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16
    extra: Dict[str, Any] = field(default_factory=dict)  # merged into the generated DeepSpeed JSON


@dataclass
class StoreConfig:
    root: str = "outputs"  # local dir or s3://bucket/prefix; runs live in <root>/runs/<name>
    endpoint_url: Optional[str] = None  # S3-compatible endpoint; None: env / boto3 default


@dataclass
class TrainConfig:
    epochs: int = 18
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "step"  # step | cosine | constant
    milestones: List[int] = field(default_factory=lambda: [10, 15])  # epochs (step schedule)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0  # cosine floor
    grad_accum: int = 1  # micro-batches per optimizer step (ignored when global_batch is set: derived from it)
    # clips per optimizer step, the same at any world size: gradient accumulation = global_batch / (data.batch_size
    # x ranks). None: data.batch_size x grad_accum x the ranks of the run's first start, kept by its checkpoints.
    global_batch: Optional[int] = None
    clip_grad: float = 1.0  # 0 disables
    label_smoothing: float = 0.1
    val_every: int = 1  # epochs; 0 disables validation during training
    log_every: int = 10  # optimizer steps
    max_steps: int = 0  # stop after this many optimizer steps (0: run all epochs); for smoke tests
    progress: bool = True  # progress bar on rank 0


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # also save every N optimizer steps (0: only at epoch ends and at the end)
    every_epochs: int = 1  # save at the end of every N-th epoch (0: never at epoch ends)
    keep_last: int = 2  # committed checkpoints kept (the newest is never deleted)
    keep_every: int = 0  # also keep every step divisible by this (0: none)
    background: bool = True  # upload while training continues; the next save / stop / end commits it
    every_minutes: float = 0.0  # also save when this long has passed since the last save (0: off); bounds the
    #                             work lost to a node that dies without warning
    staging_dir: Optional[str] = None  # node-local scratch for checkpoint files (None: $SLURM_TMPDIR or $TMPDIR)


@dataclass
class EvalConfig:
    at_end: bool = True  # the train job evaluates the final model on the test split
    clips: int = "${data.test_clips}"  # type: ignore[assignment]
    crops: int = "${data.test_crops}"  # type: ignore[assignment]
    plots: bool = True


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    cluster: Any = MISSING  # one schema per backend (msca.cluster.schema), chosen by the cluster group
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0


# Keys that may change between launches of one run without changing what the run computes.
MUTABLE = (
    "run.",
    "cluster.",
    "store.",
    "eval.",
    "checkpoint.",
    "data.num_workers",
    "data.eval_batch_size",
    "data.io_workers",
    "data.val_clips",
    "data.test_clips",
    "data.test_crops",
    "data.test_list",
    "train.progress",
    "train.log_every",
    "train.val_every",
    "train.max_steps",
    "model.pretrained",
)


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def identity(cfg: DictConfig) -> dict:
    """The flattened settings that define what a run computes (what must match to resume it)."""
    return {k: v for k, v in flat(OmegaConf.to_container(cfg, resolve=True)).items() if not k.startswith(MUTABLE)}


def identity_hash(cfg: DictConfig) -> str:
    return hashlib.sha256(json.dumps(identity(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def register_schema() -> None:
    """Make the schema the base of `configs/config.yaml` (its first default is `msca_schema`)."""
    from hydra.core.config_store import ConfigStore

    from msca.cluster.schema import SCHEMAS

    store = ConfigStore.instance()
    store.store(name="msca_schema", node=Config)
    for backend, schema in SCHEMAS.items():  # configs/cluster/<backend>.yaml starts from <backend>_schema
        store.store(group="cluster", name=f"{backend}_schema", node=schema)


def load_config(text: str) -> DictConfig:
    """A resolved config.yaml from a run home, typed again by the schema (so jobs see the same types)."""
    return OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(text))


# Choices with a fixed vocabulary, checked at launch (Hydra checks keys and types, not values).
CHOICES = {
    "run.job": ("train", "evaluate"),
    "cluster.backend": ("local", "slurm", "ray"),
    "deepspeed.zero_stage": (0, 1, 2, 3),
    "deepspeed.precision": ("fp32", "bf16", "fp16"),
    "train.optimizer": ("sgd", "adamw"),
    "train.schedule": ("step", "cosine", "constant"),
    "data.sampling": ("dense", "uniform"),
}


# Numeric bounds checked at launch: key -> (test, what the value must be). Optional keys may be null. The
# cluster section's rules sit next to its fields (msca.cluster.schema).
BOUNDS = {
    "model.num_classes": at_least(1),
    "model.patch_size": at_least(1),
    "model.embed_dim": at_least(1),
    "model.depth": at_least(1),
    "model.num_heads": at_least(1),
    "model.mlp_ratio": above(0),
    "model.shift_div": at_least(2),
    "model.drop_path_rate": within(0, 1, hi_open=True),
    "train.epochs": at_least(1),
    "train.lr": above(0),
    "train.momentum": within(0, 1, hi_open=True),
    "train.weight_decay": at_least(0),
    "train.gamma": above(0),
    "train.warmup_epochs": at_least(0),
    "train.min_lr": at_least(0),
    "train.grad_accum": at_least(1),
    "train.global_batch": at_least(1),
    "train.clip_grad": at_least(0),
    "train.label_smoothing": within(0, 1, hi_open=True),
    "train.val_every": at_least(0),
    "train.log_every": at_least(1),
    "train.max_steps": at_least(0),
    "checkpoint.every_steps": at_least(0),
    "checkpoint.every_epochs": at_least(0),
    "checkpoint.keep_last": at_least(0),
    "checkpoint.keep_every": at_least(0),  # keep_last 0: keep all
    "checkpoint.every_minutes": at_least(0),
    "data.num_frames": at_least(1),
    "data.stride": at_least(1),
    "data.crop_size": at_least(1),
    "data.test_short_side": at_least(1),
    "data.val_clips": at_least(1),
    "data.test_clips": at_least(1),
    "data.test_crops": at_least(1),
    "data.color_jitter_prob": within(0, 1),
    "data.std": above(0),
    "data.batch_size": at_least(1),
    "data.eval_batch_size": at_least(1),
    "data.num_workers": at_least(0),
    "data.io_workers": at_least(1),
    "data.max_bad_fraction": within(0, 1),
    "eval.clips": at_least(1),
    "eval.crops": at_least(1),  # after data.*: they default to data.test_*
}
# Checked only when data.synthetic is set (data=synthetic).
SYNTHETIC_BOUNDS = {
    "classes": at_least(1),
    "videos_per_class": at_least(1),
    "val_videos_per_class": at_least(1),
    "frames": at_least(1),
    "height": at_least(1),
    "width": at_least(1),
    "speed": above(0),
    "hue_speed": above(0),
    "quality": within(1, 100),
}
LIST_BOUNDS = {"train.betas": within(0, 1, hi_open=True), "train.milestones": at_least(0)}


def check_numbers(cfg: DictConfig) -> None:
    """Every numeric option within its bounds, the key named (a negative count must not run silently)."""
    for key, rule in BOUNDS.items():
        check(key, OmegaConf.select(cfg, key), rule)
    for key, rule in LIST_BOUNDS.items():
        for i, value in enumerate(OmegaConf.select(cfg, key)):
            check(f"{key}[{i}]", value, rule)
    if cfg.data.synthetic is not None:
        for name, rule in SYNTHETIC_BOUNDS.items():
            check(f"data.synthetic.{name}", cfg.data.synthetic[name], rule)


def check_sizes(cfg: DictConfig) -> None:
    """Sizes that must agree with each other: the resize range and the crop, the crop and the patch grid."""
    data = cfg.data
    short = list(data.train_short_side)
    if len(short) != 2 or not data.crop_size <= short[0] < short[1]:
        raise ValueError(
            f"data.train_short_side={short} must be [lo, hi) with data.crop_size={data.crop_size} "
            f"<= lo < hi (the short side is drawn from range(lo, hi))"
        )
    if data.test_short_side < data.crop_size:
        raise ValueError(f"data.test_short_side={data.test_short_side} must be >= data.crop_size={data.crop_size}")
    if cfg.train.min_lr > cfg.train.lr:
        raise ValueError(f"train.min_lr={cfg.train.min_lr} must be <= train.lr={cfg.train.lr}")
    from msca.model.factory import PRESETS  # lazily: it imports torch

    if cfg.model.arch not in PRESETS:
        raise ValueError(f"model.arch={cfg.model.arch!r} is not one of {list(PRESETS)}")
    preset = PRESETS[cfg.model.arch]
    patch = cfg.model.patch_size or preset["patch_size"]
    if cfg.model.img_size % patch:
        size = "data.crop_size" if cfg.model.img_size == data.crop_size else "model.img_size"
        raise ValueError(f"{size}={cfg.model.img_size} must be a multiple of the patch size {patch} (model.patch_size)")
    dim, heads = cfg.model.embed_dim or preset["embed_dim"], cfg.model.num_heads or preset["num_heads"]
    if dim % heads:
        raise ValueError(f"model.embed_dim={dim} must be a multiple of model.num_heads={heads}")


RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def check_run_name(name) -> None:
    """run.name becomes a folder of the store, a key prefix in S3 and a word in generated sbatch scripts: a safe
    alphabet keeps it inside the store root (no `..`, no `/`), a valid shell word and a portable file name."""
    name = str(name)
    if not RUN_NAME.match(name) or ".." in name:
        raise ValueError(
            f"run.name={name!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', not starting with "
            f"'.' or '-' and without '..'"
        )


def validate(cfg: DictConfig) -> None:
    """Value checks the schema cannot express; each error names the key and the accepted values."""
    check_run_name(cfg.run.name)
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ValueError(f"{key}={value!r} is not one of {list(allowed)}")
    if cfg.data.synthetic is not None and cfg.data.synthetic.kind not in ("hue", "scroll"):
        raise ValueError(f"data.synthetic.kind={cfg.data.synthetic.kind!r} is not one of ['hue', 'scroll']")
    check_numbers(cfg)
    check_sizes(cfg)
    from msca.cluster.schema import check_values

    check_values(cfg.cluster)


def local_paths(cfg: DictConfig) -> list[tuple[str, str]]:
    """(key, value) of every path the config sets on a filesystem (not s3://...)."""
    values = ((key, OmegaConf.select(cfg, key)) for key in ("data.root", "store.root", "model.pretrained"))
    return [(key, value) for key, value in values if value and not str(value).startswith("s3://")]


def absolutize(cfg: DictConfig) -> None:
    """Relative local paths are relative to where launch.py ran; ranks may start elsewhere (SLURM)."""
    for key, value in local_paths(cfg):
        if not os.path.isabs(value):
            OmegaConf.update(cfg, key, os.path.abspath(os.path.expanduser(value)))
