"""The configured model: a preset of `msca.model`, the config's overrides, and pretrained weights read through
the store (a path or an s3:// URI)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

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


def build_model(
    model_cfg: DictConfig, num_classes: int, endpoint_url: str | None = None, pretrained: bool = True
) -> torch.nn.Module:
    """The configured model; `pretrained=False` skips the pretrained file (for weights that replace it all)."""
    model = create_model(model_cfg.arch, **model_overrides(model_cfg, num_classes))
    if pretrained and model_cfg.pretrained:
        with fetch_local(model_cfg.pretrained, endpoint_url) as path:
            load_pretrained(model, path)
    return model


@contextmanager
def fetch_local(uri: str, endpoint_url: str | None = None) -> Iterator[str]:
    """A local path for `uri` while the block runs: s3:// objects are downloaded to a temp folder that is
    removed afterwards (every rank downloads once per start; leftovers would fill the node's /tmp)."""
    if not uri.startswith("s3://"):
        yield os.path.expanduser(uri)
        return
    parent, key = uri.rsplit("/", 1)
    folder = tempfile.mkdtemp(prefix="msca-fetch-")
    try:
        dest = os.path.join(folder, key)
        open_store(parent, endpoint_url=endpoint_url).download_file(key, dest)
        yield dest
    finally:
        shutil.rmtree(folder, ignore_errors=True)
