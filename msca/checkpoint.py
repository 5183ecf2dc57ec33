"""CheckpointManager: collective DeepSpeed saves committed to the store by a manifest written last.

Protocol (design.md):
  1. every rank: engine.save_checkpoint(staging, tag, client_state)   (client_state: trainer counters and
     every rank's RNG states, gathered to rank 0, which is the rank whose model_states file holds it)
  2. barrier; each node's local rank 0 uploads its staging files in a background thread while training goes
     on (a local store is written in place and only hashed)
  3. as soon as every rank's upload is done (`commit_if_ready()`, checked at step boundaries) or at the
     latest at the next save, a stop or the end (`wait()`): rank 0 writes checkpoints/<tag>/MANIFEST.json
     with every object's key, size and sha256
  4. rank 0 applies retention (keep_last, keep_every), never touching the newest committed step
A step without a manifest does not exist; one whose objects do not match their manifest is skipped.
DeepSpeed's own `latest` file is never used for resume.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from msca import dist
from msca.run_home import RunHome
from msca.storage import is_remote

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
TAG = re.compile(r"^step_(\d{9})$")


def tag_for(step: int) -> str:
    return f"step_{step:09d}"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class _Pending:
    """A staged checkpoint whose upload runs in a background thread and whose commit waits for `wait()`."""

    step: int
    tag: str
    trainer_state: dict
    staged: Path
    t0: float
    entries: list = field(default_factory=list)
    error: str = ""
    thread: threading.Thread | None = None


class CheckpointManager:
    def __init__(self, engine, home: RunHome, every_steps: int = 0, keep_last: int = 2, keep_every: int = 0,
                 config_hash: str = "", background: bool = True):
        self.engine, self.home = engine, home
        self.background = background
        self._pending: _Pending | None = None
        self.every_steps, self.keep_last, self.keep_every = every_steps, keep_last, keep_every
        self.config_hash = config_hash
        self.store = home.store.child("checkpoints")
        self.in_place = not is_remote(home.uri)  # a local (shared) store: DeepSpeed writes into it directly
        self.last_saved_step = -1

    # ----------------------------------------------------------------------------------------------- save
    def maybe_save(self, step: int, trainer_state: dict) -> bool:
        if self.every_steps and step % self.every_steps == 0 and step != self.last_saved_step:
            self.save(step, trainer_state)
            return True
        return False

    def save(self, step: int, trainer_state: dict) -> None:
        """Stage the checkpoint collectively, then upload (and hash) it in the background while training
        goes on; the commit happens in `wait()`, which the next save, a stop and the end of training call."""
        if step == self.last_saved_step:
            return
        self.wait()  # the previous checkpoint commits before a new one starts
        t0 = time.perf_counter()
        tag = tag_for(step)
        rngs = dist.all_gather_object(rng_state())
        client_state = {"trainer": trainer_state, "rng": rngs, "world_size": dist.world_size(),
                        "config_hash": self.config_hash}
        root = self._staging_root()
        if dist.is_main():
            shutil.rmtree(Path(root) / tag, ignore_errors=True)  # leftovers of a torn save of this step
        dist.barrier()
        self.engine.save_checkpoint(root, tag=tag, client_state=client_state, save_latest=False)
        dist.barrier()
        pending = _Pending(step, tag, trainer_state, Path(root) / tag, t0)
        pending.thread = threading.Thread(target=self._publish, args=(pending,), name=f"ckpt-{tag}", daemon=True)
        pending.thread.start()
        self._pending = pending
        self.last_saved_step = step
        log.debug("checkpoint %s staged in %.1fs; uploading in the background", tag, time.perf_counter() - t0)
        if not self.background:
            self.wait()

    def commit_if_ready(self) -> None:
        """Commit the pending checkpoint as soon as every rank's upload has finished (one tiny all-reduce;
        collective, so call it at a step boundary on every rank). Keeps the committed step close to the
        newest save instead of one interval behind it."""
        if self._pending is None:  # the same on every rank: pending is set by a collective save
            return
        finished = dist.all_reduce_sum([0.0 if self._pending.thread.is_alive() else 1.0])[0]
        if finished == dist.world_size():
            self.wait()

    def wait(self) -> None:
        """Finish this node's upload of the pending checkpoint, then commit it: rank 0 writes the manifest
        (last) and applies retention. Collective: every rank calls it at the same point."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        pending.thread.join()
        gathered = dist.all_gather_object(pending.error or pending.entries)
        errors = [g for g in gathered if isinstance(g, str)]
        if errors:
            raise RuntimeError(f"checkpoint {self.store.url(pending.tag)} could not be uploaded, so it is not "
                               f"committed (the previous one stays the resume point): {errors[0]}")
        if dist.is_main():
            objects = {e["key"]: e for part in gathered for e in part}
            manifest = {"step": pending.step, "tag": pending.tag, "time": time.time(),
                        "world_size": dist.world_size(), "trainer": pending.trainer_state,
                        "config_hash": self.config_hash,
                        "objects": sorted(objects.values(), key=lambda e: e["key"])}
            self.store.write_text(f"{pending.tag}/{MANIFEST}", json.dumps(manifest, indent=1))
            self._retain(pending.step)
        dist.barrier()
        if not self.in_place:
            shutil.rmtree(pending.staged, ignore_errors=True)
        log.info("checkpoint %s committed %.1fs after it started -> %s", pending.tag,
                 time.perf_counter() - pending.t0, self.store.url(pending.tag))

    def _staging_root(self) -> str:
        if self.in_place:
            return str(Path(self.store.url()))
        path = self.home.local_dir / "staging"
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def _publish(self, pending: "_Pending") -> None:
        """(Background thread) this node's files -> the store, with their manifest entries. In place: rank 0
        hashes everything. Errors are kept for `wait()` to report on every rank."""
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        owner = dist.is_main() if self.in_place else local_rank == 0
        if not owner or not pending.staged.exists():
            return
        try:
            for f in sorted(p for p in pending.staged.rglob("*") if p.is_file()):
                key = f"{pending.tag}/{f.relative_to(pending.staged).as_posix()}"
                if not self.in_place:
                    self.store.upload_file(str(f), key)
                pending.entries.append({"key": key, "size": f.stat().st_size, "sha256": sha256_file(f)})
        except Exception as err:  # noqa: BLE001 - reported by wait() on every rank
            pending.error = f"{type(err).__name__}: {err}"

    def _retain(self, newest: int) -> None:
        steps = self.committed_steps()
        keep = set(steps[-self.keep_last:]) if self.keep_last > 0 else set(steps)
        keep.add(newest)
        if self.keep_every:
            keep.update(s for s in steps if s % self.keep_every == 0)
        for s in steps:
            if s not in keep:
                tag = tag_for(s)
                self.store.delete(f"{tag}/{MANIFEST}")  # uncommit first: a half-deleted step never looks whole
                self.store.delete_prefix(tag + "/")

    # ----------------------------------------------------------------------------------------------- load
    def committed_steps(self) -> list[int]:
        steps = set()
        for key in self.store.list(""):
            top, _, rest = key.partition("/")
            m = TAG.match(top)
            if m and rest == MANIFEST:
                steps.add(int(m.group(1)))
        return sorted(steps)

    def verify(self, step: int) -> dict | None:
        """The manifest if every object exists with its recorded size, else None (with a warning)."""
        tag = tag_for(step)
        try:
            manifest = json.loads(self.store.read_text(f"{tag}/{MANIFEST}"))
        except (ValueError, FileNotFoundError) as err:
            log.warning("checkpoint %s: unreadable manifest (%s); skipping it", tag, err)
            return None
        for obj in manifest["objects"]:
            if not self.store.exists(obj["key"]) or self.store.size(obj["key"]) != obj["size"]:
                log.warning("checkpoint %s: %s is missing or has the wrong size; skipping this step", tag, obj["key"])
                return None
        return manifest

    def newest_complete(self) -> dict | None:
        """The manifest of the newest committed step whose objects all match it (torn ones are skipped)."""
        for step in reversed(self.committed_steps()):
            manifest = self.verify(step)
            if manifest is not None:
                return manifest
        return None

    def load_latest(self) -> dict | None:
        """Restore the newest complete checkpoint into the engine; returns its trainer state (None: fresh)."""
        chosen = dist.all_gather_object(self.newest_complete() if dist.is_main() else None)[0]
        if chosen is None:
            return None
        tag = chosen["tag"]
        root = self._fetch(chosen)
        load_path, client_state = self.engine.load_checkpoint(root, tag=tag, load_module_strict=True,
                                                              load_optimizer_states=True,
                                                              load_lr_scheduler_states=True)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {self.store.url(tag)}")
        if client_state.get("world_size") == dist.world_size():
            set_rng_state(client_state["rng"][dist.rank()])
        else:
            log.warning("checkpoint %s was written by %s ranks, now %d: RNG streams are not restored",
                        tag, client_state.get("world_size"), dist.world_size())
        if not self.in_place:
            shutil.rmtree(Path(root), ignore_errors=True)
        self.last_saved_step = chosen["step"]
        log.info("resumed from %s (step %d)", self.store.url(tag), chosen["step"])
        return client_state["trainer"]

    def _fetch(self, manifest: dict) -> str:
        """A local directory holding the checkpoint (checksums verified on download)."""
        if self.in_place:
            return str(Path(self.store.url()))
        root = Path(tempfile.mkdtemp(prefix="ckpt-", dir=self.home.local_dir))
        for obj in manifest["objects"]:
            dest = root / obj["key"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.store.download_file(obj["key"], str(dest))
            if sha256_file(dest) != obj["sha256"]:
                raise RuntimeError(f"{self.store.url(obj['key'])} does not match its manifest checksum: "
                                   f"the checkpoint is corrupt; delete {self.store.url(manifest['tag'])} to fall back")
        return str(root)
