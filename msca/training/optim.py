"""Optimizer, learning-rate schedule and DeepSpeed JSON, built from the `train` and `deepspeed` sections.

Torch optimizers are passed to DeepSpeed (no fused/CPU-Adam op compilation); the schedule is a LambdaLR
stepped by DeepSpeed once per optimizer step, so a resumed run continues it from the checkpoint. Its only input
besides the config is steps per epoch, which the global batch fixes (msca.training.batching): the schedule is
the same at any world size.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig, OmegaConf


def build_optimizer(model: torch.nn.Module, train: DictConfig) -> torch.optim.Optimizer:
    """All parameters in one group, as the original recipe (its weight decay is 0, so no exemptions)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov, weight_decay=train.weight_decay
        )
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay)
    raise ValueError(f"train.optimizer={train.optimizer!r} is not one of ['sgd', 'adamw']")


def lr_factor(step: int, train: DictConfig, steps_per_epoch: int) -> float:
    """Multiplier of train.lr after `step` optimizer steps.

    step: the original's MultiStepLR stepped per epoch (milestones in epochs). cosine: per step, to min_lr.
    Warmup (linear from lr/warmup_steps) applies to both.
    """
    warmup = int(round(train.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if train.schedule == "constant":
        return 1.0
    if train.schedule == "step":
        epoch = step // steps_per_epoch
        return train.gamma ** sum(epoch >= m for m in train.milestones)
    total = max(1, train.epochs * steps_per_epoch - warmup)
    progress = min(1.0, (step - warmup) / total)
    floor = train.min_lr / train.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, train: DictConfig, steps_per_epoch: int):
    plain = OmegaConf.to_container(train, resolve=True)  # the lambda must not hold a DictConfig (pickling)
    plain = OmegaConf.create(plain)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, plain, steps_per_epoch))


def deepspeed_config(cfg: DictConfig, grad_accum: int | None = None) -> dict:
    """DeepSpeed's JSON from our sections, so batch size, accumulation and clipping are stated once.
    `grad_accum`: the run's derived accumulation (msca.training.batching; None: train.grad_accum)."""
    ds = cfg.deepspeed
    out = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": grad_accum or cfg.train.grad_accum,
        "gradient_clipping": cfg.train.clip_grad,
        "zero_optimization": {"stage": ds.zero_stage},
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16"},
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    if ds.precision == "fp16":
        out["fp16"].update({"loss_scale": 0, "initial_scale_power": 16})
    extra = OmegaConf.to_container(ds.extra, resolve=True)
    return _merge(out, extra)


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        base[k] = _merge(dict(base.get(k, {})), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base
