"""The configured model: a preset of `msca.model`, the config's overrides, and pretrained weights read through
the store (a path or an s3:// URI)."""

from __future__ import annotations

import os
import tempfile

import torch
from omegaconf import DictConfig

from msca.model import create_model, load_pretrained
from msca.storage import open_store


def model_overrides(model_cfg: DictConfig, num_classes: int) -> dict:
    """The model section as create_model keywords: unset (None) fields keep the preset's value."""
    keys = (
        "num_frames",
        "img_size",
        "patch_size",
        "embed_dim",
        "depth",
        "num_heads",
        "mlp_ratio",
        "shift",
        "shift_div",
        "drop_path_rate",
    )
    out = {k: model_cfg[k] for k in keys if model_cfg[k] is not None}
    out["num_classes"] = model_cfg.num_classes or num_classes
    return out


def build_model(model_cfg: DictConfig, num_classes: int, endpoint_url: str | None = None) -> torch.nn.Module:
    model = create_model(model_cfg.arch, **model_overrides(model_cfg, num_classes))
    if model_cfg.pretrained:
        load_pretrained(model, fetch_local(model_cfg.pretrained, endpoint_url))
    return model


def fetch_local(uri: str, endpoint_url: str | None = None) -> str:
    """A local path for `uri` (downloads s3:// objects to a temp file)."""
    if not uri.startswith("s3://"):
        return os.path.expanduser(uri)
    parent, key = uri.rsplit("/", 1)
    dest = os.path.join(tempfile.mkdtemp(prefix="msca-fetch-"), key)
    open_store(parent, endpoint_url=endpoint_url).download_file(key, dest)
    return dest
