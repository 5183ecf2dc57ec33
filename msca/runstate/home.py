"""A run's home in the store: the one place that identifies a run, whatever backend runs it.

<store.root>/runs/<name>/
    config.yaml     resolved config (written by launch; read by every rank of every job)
    launch.json     one entry per launch: overrides, git sha, user, host, time, backend
    metrics.jsonl   training and validation metrics (rank 0)
    tb/             TensorBoard event files
    model.pt        final weights (fp32 state dict, timm names)
    results.json    evaluation results; confusion.png, curves.png
    checkpoints/    committed checkpoints (see msca.runstate.checkpoint)
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from msca.config import load_config
from msca.runtime.host import ensure_private, private_dir
from msca.storage import Store, is_remote, open_store


def run_uri(store_root: str, name: str) -> str:
    root = store_root if is_remote(store_root) else os.path.abspath(os.path.expanduser(store_root))
    return f"{root.rstrip('/')}/runs/{name}"


class RunHome:
    def __init__(self, uri: str, endpoint_url: str | None = None):
        self.uri = uri
        self.endpoint_url = endpoint_url
        self.store: Store = open_store(uri, endpoint_url=endpoint_url)

    def with_store(self, store: Store) -> "RunHome":
        """This home read and written through `store` (the same run: e.g. a lease-fenced view of it)."""
        other = copy.copy(self)
        other.store = store
        return other

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def local_path(self) -> Path:
        """Where this machine writes files that are later synced to the store (TensorBoard, logs): a cache on
        node-local scratch, private to this user (MSCA_CACHE, else `<scratch>/msca-<uid>/cache`; never $HOME,
        which clusters share over NFS). For a local store it is the home itself. Nothing here is the run's
        state: the store is. Only computed: reading a run creates nothing (see `local_dir`)."""
        if not is_remote(self.uri):
            return Path(self.uri)
        digest = hashlib.sha1(self.uri.encode()).hexdigest()[:10]
        return self._cache_root(create=False) / "runs" / f"{self.name}-{digest}"

    @property
    def local_dir(self) -> Path:
        """`local_path`, created (for writers): a remote home's cache under a folder checked to be ours (0700)."""
        if is_remote(self.uri):
            self._cache_root(create=True)
        path = self.local_path
        path.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def _cache_root(create: bool) -> Path:
        configured = os.environ.get("MSCA_CACHE")
        if configured:
            path = Path(configured).expanduser()
            return ensure_private(path) if create else path
        root = private_dir(create=create) / "cache"
        if create:
            root.mkdir(mode=0o700, exist_ok=True)
        return root

    def exists(self) -> bool:
        return self.store.exists("config.yaml")

    def config(self) -> DictConfig:
        try:
            text = self.store.read_text("config.yaml")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self.store.url('config.yaml')} does not exist: this run was never launched. "
                f"Start it with `python launch.py run.name={self.name}`."
            ) from None
        return load_config(text)

    def write_config(self, cfg: DictConfig) -> None:
        self.store.write_text("config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    def sync_up(self, relpath: str) -> None:
        """Copy a file or folder of local_dir to the store (no-op for a local store)."""
        if not is_remote(self.uri):
            return
        src = self.local_path / relpath
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
        for f in files:
            self.store.upload_file(str(f), f.relative_to(self.local_path).as_posix())
