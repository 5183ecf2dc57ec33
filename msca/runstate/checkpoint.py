"""CheckpointManager: collective DeepSpeed saves committed to the store by a manifest written last.

Protocol (the one `msca.runstate` keeps for every run):
  1. every rank: engine.save_checkpoint(staging, tag, client_state)   (client_state: trainer counters and
     every rank's RNG states, gathered to rank 0, which is the rank whose model_states file holds it). A step
     that exists in the store (reached again after a crash) is uncommitted and cleared first.
  2. each rank uploads exactly the files it wrote (`owner_of`: DeepSpeed's `zero_pp_rank_N_` names say which;
     the rest are rank 0's), from node-local staging, in a background thread while training goes on (a local
     store is written in place and only hashed)
  3. as soon as every rank's upload is done (`commit_if_ready()`, checked at step boundaries) or at the
     latest at the next save, a stop or the end (`wait()`): rank 0 writes checkpoints/<tag>/MANIFEST.json
     with every object's key, size and sha256
  4. rank 0 applies retention (keep_last, keep_every, torn steps older than the newest commit), never
     touching the newest committed step; a retention failure is logged, not fatal
Resume: each rank fetches (once per node) and verifies the objects it loads before DeepSpeed sees them; any
missing, truncated or altered object makes all ranks fall back to the next older committed step together.
Every section with rank-0-only work is `agreed`: an error on one rank reaches all. DeepSpeed's own `latest`
file is never used.
Another world size or ZeRO stage (msca.runstate.reshard): rank 0 converts the verified step once into a
universal checkpoint under <tag>/universal/, committed by its own MANIFEST.json written last (a crashed
conversion is never trusted: the next resume converts again), reused by later restarts and deleted by retention
with its source; every node fetches and verifies it like any checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from msca.runstate.home import RunHome
from msca.runstate.reshard import DIRECT, SUBDIR, UNIVERSAL, convert, describe, plan, zero_stage_of
from msca.runtime import dist
from msca.runtime.collective import CollectiveError, agreed, from_main
from msca.runtime.host import private_dir, private_umask
from msca.storage import is_remote

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
TAG = re.compile(r"^step_(\d{9})$")
RANK_FILE = re.compile(r"zero_pp_rank_(\d+)_")


FAULT, ERROR = "fault", "error"  # a restore outcome: the checkpoint's own fault (fall back), or anything else


def tag_for(step: int) -> str:
    return f"step_{step:09d}"


def owner_of(filename: str) -> int:
    """The global rank that wrote a DeepSpeed checkpoint file: `*zero_pp_rank_N_*` files are rank N's (optimizer
    shards; ZeRO-3 parameter shards), the rest (mp_rank_00_model_states.pt) rank 0's."""
    m = RANK_FILE.search(filename)
    return int(m.group(1)) if m else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def staging_root(configured: Optional[str], home: RunHome) -> Path:
    """Node-local scratch for this run's checkpoint files, private to this user:
    `<checkpoint.staging_dir or the node's scratch>/msca-<uid>/staging/<name>-<hash>` (0700, checked to be ours:
    msca.runtime.host.private_dir), so no other local user can read the weights or swap a file between its
    checksum and DeepSpeed's load."""
    digest = hashlib.sha1(home.uri.encode()).hexdigest()[:10]
    path = private_dir(configured) / "staging" / f"{home.name}-{digest}"
    with private_umask():
        path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _attempt(fn) -> tuple:
    """(fn(), '') or (None, 'Type: message'): an outcome every rank can agree on without a traceback."""
    try:
        return fn(), ""
    except Exception as err:  # noqa: BLE001 - agreed by every rank, then one line
        return None, f"{type(err).__name__}: {err}"


def _check_manifest(manifest: dict, tag: str) -> None:
    """Raise ValueError unless the manifest has everything a restore reads (a restore that stops half-way
    through a malformed manifest would be taken for a store fault)."""
    objects = manifest.get("objects") if isinstance(manifest, dict) else None
    fields = (manifest.get("tag"), manifest.get("world_size")) if isinstance(manifest, dict) else (None, None)
    if fields[0] != tag or not isinstance(fields[1], int) or not isinstance(objects, list):
        raise ValueError("no tag, world_size or objects list of its own")
    for obj in objects:
        if not (isinstance(obj, dict) and isinstance(obj.get("key"), str) and isinstance(obj.get("size"), int)):
            raise ValueError(f"an object entry without key or size: {obj!r:.80}")
        if not isinstance(obj.get("sha256"), str):
            raise ValueError(f"an object entry without sha256: {obj!r:.80}")


def _is_missing_object(err: FileNotFoundError) -> bool:
    """A download's FileNotFoundError is the object's (missing in the store, raised by the store without a
    file name) unless the OS raised it for a local file (staging vanished under us: not the checkpoint's)."""
    return getattr(err, "filename", None) is None


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
    def __init__(
        self,
        engine,
        home: RunHome,
        every_steps: int = 0,
        keep_last: int = 2,
        keep_every: int = 0,
        config_hash: str = "",
        background: bool = True,
        every_minutes: float = 0.0,
        staging_dir: Optional[str] = None,
        before_commit: Optional[Callable[[], None]] = None,
        on_commit: Optional[Callable[[int, float], None]] = None,
        fence: Optional[Callable[[str], None]] = None,
    ):
        self.engine, self.home = engine, home
        self.background = background
        self._pending: _Pending | None = None
        self.every_steps, self.keep_last, self.keep_every = every_steps, keep_last, keep_every
        self.every_s = 60.0 * every_minutes
        self.config_hash = config_hash
        self.store = home.store.child("checkpoints")
        self.in_place = not is_remote(home.uri)  # a local (shared) store: DeepSpeed writes into it directly
        self._staging_dir, self._staging = staging_dir, None
        if engine is not None:  # a training manager checks its scratch at start, where its peers do
            _ = self.staging
        self.before_commit = before_commit  # rank 0, just before a manifest is written (e.g. "do we still hold
        self.on_commit = on_commit  # the lease?"); on_commit(step, seconds the loop waited for it)
        self.fence = fence  # rank 0: raises unless the lease is provably ours (msca.runstate.lease.Lease.fence)
        self.last_saved_step = -1
        self.last_save_time = time.monotonic()
        self._in_store: set = set()  # tags with objects in the store when this attempt started
        self.stall_s = 0.0  # time the training loop spent inside save/wait (what background uploads hide)
        self.restored_world = 0  # the world size that wrote the restored checkpoint (0: nothing restored)

    @classmethod
    def from_config(cls, section, engine, home: RunHome, **hooks) -> "CheckpointManager":
        """Built from the config's `checkpoint` section (msca.config.CheckpointConfig); `hooks`: config_hash,
        before_commit, on_commit, fence."""
        return cls(
            engine,
            home,
            every_steps=section.every_steps,
            every_minutes=section.every_minutes,
            keep_last=section.keep_last,
            keep_every=section.keep_every,
            background=section.background,
            staging_dir=section.staging_dir,
            **hooks,
        )

    @property
    def staging(self) -> Path:
        """Where DeepSpeed writes and restores (a local store: the store itself). Made on first use only, so
        a manager that only reads the store (`python -m msca.runs`) creates nothing on this machine."""
        if self._staging is None:
            self._staging = Path(self.store.url()) if self.in_place else staging_root(self._staging_dir, self.home)
        return self._staging

    # ----------------------------------------------------------------------------------------------- save
    def maybe_save(self, step: int, trainer_state: dict) -> bool:
        """Save on the step interval or, with every_minutes, when the agreed clock says so (for node loss
        without warning, a time-based interval bounds the work lost)."""
        due = bool(self.every_steps) and step % self.every_steps == 0
        if self.every_s and not due:  # rank 0's clock decides, so every rank saves at the same step
            late = dist.is_main() and time.monotonic() - self.last_save_time >= self.every_s
            due = dist.all_reduce_sum([1.0 if late else 0.0])[0] > 0
        if due and step != self.last_saved_step:
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
        client_state = {
            "trainer": trainer_state,
            "rng": rngs,
            "world_size": dist.world_size(),
            "zero_stage": self.zero_stage(),
            "config_hash": self.config_hash,
        }
        agreed(lambda: self._clear(tag), f"preparing checkpoint {tag}")
        with contextlib.nullcontext() if self.in_place else private_umask():  # staged files: 0600
            self.engine.save_checkpoint(str(self.staging), tag=tag, client_state=client_state, save_latest=False)
        dist.barrier()
        pending = _Pending(step, tag, trainer_state, self.staging / tag, t0)
        pending.thread = threading.Thread(target=self._publish, args=(pending,), name=f"ckpt-{tag}", daemon=True)
        pending.thread.start()
        self._pending = pending
        self.last_saved_step, self.last_save_time = step, time.monotonic()
        self.stall_s += time.perf_counter() - t0
        log.debug("checkpoint %s staged in %.1fs; uploading in the background", tag, time.perf_counter() - t0)
        if not self.background:
            self.wait()

    def _clear(self, tag: str) -> None:
        """A step being saved again (reached again after a crash) is uncommitted first, then its old objects and
        any leftovers of a torn save are removed, so a manifest never names a mix of two saves."""
        self._fenced(f"saving checkpoint {tag}")  # before any rank stages or uploads a byte of it
        if dist.is_main() and tag in self._in_store:  # known at start: no store round trip on the hot path
            self.store.delete(f"{tag}/{MANIFEST}")
            self.store.delete_prefix(tag + "/")
            self._in_store.discard(tag)
        if dist.is_main() if self.in_place else local_rank() == 0:
            shutil.rmtree(self.staging / tag, ignore_errors=True)

    def _fenced(self, doing: str) -> None:
        """(rank 0) raise LeaseLost unless this attempt still provably holds the run's lease."""
        if self.fence is not None and dist.is_main():
            self.fence(doing)

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
        """Finish this rank's upload of the pending checkpoint, then commit it: rank 0 writes the manifest
        (last) and applies retention. Collective: every rank calls it at the same point."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        t0 = time.perf_counter()
        pending.thread.join()
        agreed(lambda: self._fenced(f"committing checkpoint {pending.tag}"), f"committing checkpoint {pending.tag}")
        gathered = dist.all_gather_object(pending.error or pending.entries)
        errors = [(r, g) for r, g in enumerate(gathered) if isinstance(g, str)]
        if errors:
            raise RuntimeError(
                f"checkpoint {self.store.url(pending.tag)} could not be uploaded by rank "
                f"{errors[0][0]}, so it is not committed (the previous one stays the resume "
                f"point): {errors[0][1]}"
            )
        agreed(
            lambda: self._write_manifest(pending, [e for part in gathered for e in part]),
            f"committing checkpoint {pending.tag}",
        )
        if dist.is_main():
            try:
                self._retain(pending.step)
            except Exception as err:  # noqa: BLE001 - retention never costs the run
                log.warning("checkpoint retention failed (%s); older checkpoints stay until the next commit", err)
        if not self.in_place and local_rank() == 0:
            shutil.rmtree(pending.staged, ignore_errors=True)
        stall = time.perf_counter() - t0
        self.stall_s += stall
        if self.on_commit is not None and dist.is_main():
            self.on_commit(pending.step, stall)
        log.info(
            "checkpoint %s committed %.1fs after it started -> %s",
            pending.tag,
            time.perf_counter() - pending.t0,
            self.store.url(pending.tag),
        )

    def _write_manifest(self, pending: "_Pending", entries: list) -> None:
        if not dist.is_main():
            return
        if self.before_commit is not None:
            self.before_commit()
        manifest = {
            "step": pending.step,
            "tag": pending.tag,
            "time": time.time(),
            "world_size": dist.world_size(),
            "zero_stage": self.zero_stage(),
            "trainer": pending.trainer_state,
            "config_hash": self.config_hash,
            "objects": sorted(entries, key=lambda e: e["key"]),
        }
        self.store.write_text(f"{pending.tag}/{MANIFEST}", json.dumps(manifest, indent=1))

    def zero_stage(self) -> int:
        return int(self.engine.zero_optimization_stage()) if self.engine is not None else 0

    def _publish(self, pending: "_Pending") -> None:
        """(Background thread) the files this rank wrote -> the store, with their manifest entries (in place:
        only hashed). Leftovers of other saves cannot be among them: the step's folder was cleared first.
        Errors are kept for `wait()` to report on every rank."""
        if not pending.staged.exists():
            return
        mine = [f for f in sorted(pending.staged.rglob("*")) if f.is_file() and owner_of(f.name) == dist.rank()]
        try:
            # hashing overlaps the uploads (both read the same page-cached bytes; hashlib releases the GIL)
            with ThreadPoolExecutor(max_workers=max(1, 2 * len(mine)), thread_name_prefix="ckpt-io") as pool:
                jobs = []
                for f in mine:
                    key = f"{pending.tag}/{f.relative_to(pending.staged).as_posix()}"
                    upload = None if self.in_place else pool.submit(self.store.upload_file, str(f), key)
                    jobs.append((f, key, pool.submit(sha256_file, f), upload))
                for f, key, digest, upload in jobs:
                    if upload is not None:
                        upload.result()
                    pending.entries.append({"key": key, "size": f.stat().st_size, "sha256": digest.result()})
        except Exception as err:  # noqa: BLE001 - reported by wait() on every rank
            pending.error = f"{type(err).__name__}: {err}"

    def _retain(self, newest: int) -> None:
        steps = self.committed_steps()
        keep = set(steps[-self.keep_last :]) if self.keep_last > 0 else set(steps)
        keep.add(newest)
        if self.keep_every:
            keep.update(s for s in steps if s % self.keep_every == 0)
        for s in steps:
            if s not in keep:
                tag = tag_for(s)
                self.store.delete(f"{tag}/{MANIFEST}")  # uncommit first: a half-deleted step never looks whole
                self.store.delete_prefix(tag + "/")
        for s in self.torn_steps():
            if s < newest:  # a torn step older than a commit will never be completed: reclaim its space
                log.info("removing torn checkpoint %s (never committed)", tag_for(s))
                self.store.delete_prefix(tag_for(s) + "/")

    # ----------------------------------------------------------------------------------------------- load
    def _steps(self) -> tuple[set, set]:
        """(steps with any object, steps with a manifest) in the store."""
        present, committed = set(), set()
        for key in self.store.list(""):
            top, _, rest = key.partition("/")
            m = TAG.match(top)
            if m:
                present.add(int(m.group(1)))
                if rest == MANIFEST:
                    committed.add(int(m.group(1)))
        return present, committed

    def committed_steps(self) -> list[int]:
        return sorted(self._steps()[1])

    def torn_steps(self) -> list[int]:
        present, committed = self._steps()
        return sorted(present - committed)

    def read_manifest(self, step: int) -> dict:
        return json.loads(self.store.read_text(f"{tag_for(step)}/{MANIFEST}"))

    def verify(self, step: int, deep: bool = True) -> str:
        """'' if every object of the step matches its manifest (size; sha256 when deep), else what is wrong."""
        try:
            manifest = self.read_manifest(step)
        except (ValueError, FileNotFoundError, KeyError) as err:
            return f"unreadable manifest ({err})"
        for obj in manifest["objects"]:
            problem = self._check_object(obj, deep)
            if problem:
                return problem
        return ""

    def _check_object(self, obj: dict, deep: bool, local: Optional[Path] = None) -> str:
        """'' if the object (in the store, or its downloaded copy `local`) has the manifest's size and hash."""
        url = self.store.url(obj["key"])
        try:
            size = local.stat().st_size if local else self.store.size(obj["key"])
        except FileNotFoundError:
            return f"{url} is missing"
        if size != obj["size"]:
            return f"{url} has {size} bytes, its manifest says {obj['size']} (truncated or replaced)"
        if deep:
            path = local or (Path(url) if self.in_place else None)
            if path is not None and sha256_file(path) != obj["sha256"]:
                return f"{url} does not match its manifest checksum (altered)"
        return ""

    def newest_complete(self) -> dict | None:
        """The manifest of the newest committed step whose objects all match it (sizes; hashes are checked
        when resuming). For status tools: the resume itself runs `load_latest`."""
        for step in reversed(self.committed_steps()):
            problem = self.verify(step, deep=False)
            if not problem:
                return self.read_manifest(step)
            log.warning("checkpoint %s: %s; skipping this step", tag_for(step), problem)
        return None

    def newest_manifest(self) -> dict | None:
        """The newest committed manifest that parses (its objects unchecked): what a start needs before its engine
        exists (the run's global batch); `load_latest` still verifies everything it restores."""
        for step in reversed(self.committed_steps()):
            manifest, kind, _ = self._manifest_outcome(step)
            if not kind:
                return manifest
        return None

    def load_latest(self) -> dict | None:
        """Restore the newest committed checkpoint whose objects verify into the engine; returns its trainer
        state (None: a fresh start). All ranks walk the committed steps newest first and agree on each. Only a
        checkpoint's own fault (an object missing, a size or checksum mismatch, an invalid manifest) falls back
        to an older commit; any other fault (the store unreachable or refusing, staging not writable) ends the
        attempt before anything is written, since a fresh start would cut the run's history."""
        listed, error = from_main(lambda: _attempt(self._steps), "listing checkpoints")
        if error:
            raise self._restore_error(0, error, "listing the checkpoints of")
        present, committed = listed
        self._in_store = {tag_for(s) for s in present}  # steps a later save may reach again
        steps = sorted(committed)
        for step in reversed(steps):
            tag = tag_for(step)
            what = f"reading the manifest of {tag}"
            manifest, kind, problem = from_main(lambda step=step: self._manifest_outcome(step), what)
            if kind == ERROR:
                raise self._restore_error(0, problem, f"{what} in")
            if kind == FAULT:
                log.warning("checkpoint %s cannot be resumed: %s; falling back to the previous one", tag, problem)
                continue
            how = self._plan(manifest)  # the same on every rank (ReshardError: one line, on every rank)
            fetched = manifest
            if how == UNIVERSAL:
                fetched, kind, problem = self._universal(manifest)
                if kind == ERROR:
                    raise self._restore_error(0, problem, f"converting {tag} (universal checkpoint) of")
                if kind == FAULT:
                    log.warning("checkpoint %s cannot be resumed: %s; falling back to the previous one", tag, problem)
                    continue
            root = self.staging if self.in_place else self.staging / "restore"
            try:
                outcomes = dist.all_gather_object(self._fetch(fetched, root))
                failed = next(((r, p) for r, (k, p) in enumerate(outcomes) if k == ERROR), None)
                if failed:
                    raise self._restore_error(failed[0], failed[1], f"restoring {tag} into {root} from")
                problem = next((p for k, p in outcomes if k == FAULT), "")
                if problem:
                    log.warning("checkpoint %s cannot be resumed: %s; falling back to the previous one", tag, problem)
                    continue
                state = self._load(root, manifest, universal=how == UNIVERSAL)
            finally:
                dist.barrier()  # every rank has finished reading before the download is removed
                if not self.in_place and local_rank() == 0:
                    shutil.rmtree(root, ignore_errors=True)
            return state
        if steps:
            log.warning(
                "none of the %d committed checkpoints of %s verifies: starting from scratch",
                len(steps),
                self.store.url(),
            )
        return None

    def _restore_error(self, rank: int, error: str, doing: str) -> CollectiveError:
        """The same one-line error on every rank (a user error: no traceback), naming the rank, the cause and
        the store. Phrased as an agreed section's error, so the original's class judges whether a retry helps."""
        return CollectiveError(
            f"{doing} {self.store.url()} failed on rank {rank}: {error}. This is not a fault of the checkpoint, "
            "so nothing was restored or written (a fresh start would cut the run's history): fix it and relaunch"
        )

    def _manifest_outcome(self, step: int) -> tuple[dict | None, str, str]:
        """(manifest, '', '') or (None, FAULT or ERROR, what is wrong): an unreadable or invalid manifest is the
        checkpoint's fault; a store that cannot be read is not."""
        try:
            manifest = self.read_manifest(step)
            _check_manifest(manifest, tag_for(step))
            return manifest, "", ""
        except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
            return None, FAULT, f"unreadable manifest {self.store.url(tag_for(step))}/{MANIFEST} ({err})"
        except Exception as err:  # noqa: BLE001 - agreed by every rank, then one line
            return None, ERROR, f"{type(err).__name__}: {err}"

    def _my_objects(self, manifest: dict) -> list:
        """The objects this rank fetches and checks: its own shards when the world size is unchanged (each rank
        loads only those), and on each node's first rank everything else (shared by the node's ranks)."""
        same_world = manifest["world_size"] == dist.world_size()
        mine = []
        for obj in manifest["objects"]:
            name = obj["key"].rsplit("/", 1)[-1]
            if same_world and RANK_FILE.search(name):
                if owner_of(name) == dist.rank():
                    mine.append(obj)
            elif local_rank() == 0:
                mine.append(obj)
        return mine

    def _fetch(self, manifest: dict, root: Path) -> tuple[str, str]:
        """Download (S3) and verify this rank's objects under root: ('', '') when they verify, (FAULT, what) for
        the checkpoint's own fault (an object missing or not matching its manifest), (ERROR, what) for anything
        else (the store unreachable or refusing, staging full or not writable)."""
        try:
            if not self.in_place and local_rank() == 0:
                shutil.rmtree(root, ignore_errors=True)
            dist.barrier()
            for obj in self._my_objects(manifest):
                problem = self._fetch_object(obj, None if self.in_place else root)
                if problem:
                    return FAULT, problem
            return "", ""
        except Exception as err:  # noqa: BLE001 - agreed by every rank, then one line
            return ERROR, f"{type(err).__name__}: {err}"

    def _fetch_object(self, obj: dict, root: Optional[Path]) -> str:
        """Download one manifest object under `root` (None: a local store, read in place) and verify it: "" when
        it verifies, else the checkpoint's own fault (missing, or not what its manifest says); other errors raise."""
        local = None
        if root is not None:
            local = root / obj["key"]
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.store.download_file(obj["key"], str(local))
            except FileNotFoundError as err:
                if not _is_missing_object(err):
                    raise
                return f"{self.store.url(obj['key'])} is missing"
        return self._check_object(obj, deep=True, local=local)

    def _load(self, root: Path, manifest: dict, universal: bool = False) -> dict:
        tag = manifest["tag"]
        config = self.engine._config  # the engine reads `checkpoint.load_universal` at load time only
        config.load_universal_checkpoint = universal
        try:
            load_path, client_state = self.engine.load_checkpoint(
                str(root / tag) if universal else str(root),
                tag=SUBDIR if universal else tag,
                load_module_strict=True,
                load_optimizer_states=True,
                load_lr_scheduler_states=True,
            )
        finally:
            config.load_universal_checkpoint = False
        self.restored_world = manifest["world_size"]
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {self.store.url(tag)}")
        if client_state.get("world_size") == dist.world_size():
            set_rng_state(client_state["rng"][dist.rank()])
        else:  # said by _plan when it resumes: a run of the same optimisation with new random streams
            log.debug("%s was written by %s ranks: RNG streams are not restored", tag, manifest["world_size"])
        self.last_saved_step = manifest["step"]
        log.info("resumed from %s (step %d)", self.store.url(tag), manifest["step"])
        return client_state["trainer"]

    # -------------------------------------------------------------------- another world size or ZeRO stage
    def _plan(self, manifest: dict) -> str:
        """DIRECT or UNIVERSAL for this engine; says so when the shape changed (never silent)."""
        src_world, src_stage, step = manifest["world_size"], zero_stage_of(manifest), manifest["step"]
        world, stage = dist.world_size(), self.zero_stage()
        how = plan(step, src_world, src_stage, world, stage)
        if how == DIRECT and (src_world, src_stage) != (world, stage) and dist.is_main():
            log.warning("%s", describe(step, src_world, src_stage, world, stage, "loading it as it is (ZeRO-0)"))
        return how  # UNIVERSAL is said by rank 0 once it knows whether it converts or reuses a conversion

    def _say(self, manifest: dict, how: str) -> None:
        shape = (manifest["world_size"], zero_stage_of(manifest), dist.world_size(), self.zero_stage())
        log.warning("%s", describe(manifest["step"], *shape, how))

    def _universal(self, manifest: dict) -> tuple[dict | None, str, str]:
        """(universal manifest, '', '') from rank 0, which reuses a committed conversion that verifies or makes
        and commits one; (None, FAULT, what) when the source's own objects do not verify, (None, ERROR, what) for
        anything else. Two sections, so a crash between the upload and the manifest can be tested."""
        tag = manifest["tag"]
        made, kind, problem = from_main(lambda: self._universal_outcome(manifest), f"converting {tag} to universal")
        if kind:
            return None, kind, problem
        universal, fresh = made
        if fresh:
            from_main(
                lambda: self.store.write_text(f"{tag}/{SUBDIR}/{MANIFEST}", json.dumps(universal, indent=1)),
                f"committing the universal checkpoint of {tag}",
            )
        return universal, "", ""

    def _committed_universal(self, tag: str) -> dict | None:
        """(rank 0) A committed conversion of `tag` whose objects match its manifest, else None."""
        key = f"{tag}/{SUBDIR}/{MANIFEST}"
        if not self.store.exists(key):
            return None
        try:
            universal = json.loads(self.store.read_text(key))
            _check_manifest(universal, tag)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("universal checkpoint %s: unreadable manifest (%s); converting again", tag, err)
            return None
        for obj in universal["objects"]:
            problem = self._check_object(obj, deep=True)
            if problem:
                log.warning("universal checkpoint %s: %s; converting again", tag, problem)
                return None
        return universal

    def _universal_outcome(self, manifest: dict) -> tuple:
        """(rank 0) ((universal manifest, fresh), '', '') or (None, FAULT | ERROR, what)."""
        tag = manifest["tag"]
        reused = self._committed_universal(tag)
        if reused is not None:
            self._say(manifest, "using the universal checkpoint an earlier start converted")
            return (reused, False), "", ""
        self._say(manifest, "converting (universal checkpoint)")
        work = None if self.in_place else self.staging / "convert"
        t0 = time.perf_counter()
        try:
            self.store.delete_prefix(f"{tag}/{SUBDIR}/")  # a crashed conversion's leftovers: never mixed in
            source = Path(self.store.url(tag)) if self.in_place else work / "source" / tag
            for obj in manifest["objects"]:  # every shard of the source, checked before it is converted
                problem = self._fetch_object(obj, None if work is None else work / "source")
                if problem:
                    return None, FAULT, problem
            out = Path(self.store.url(f"{tag}/{SUBDIR}")) if self.in_place else work / "out"
            with contextlib.nullcontext() if self.in_place else private_umask():
                convert(source, out)
            entries = []
            for f in sorted(p for p in out.rglob("*") if p.is_file()):
                key = f"{tag}/{SUBDIR}/{f.relative_to(out).as_posix()}"
                if work is not None:
                    self.store.upload_file(str(f), key)
                entries.append({"key": key, "size": f.stat().st_size, "sha256": sha256_file(f)})
        except Exception as err:  # noqa: BLE001 - agreed by every rank, then one line
            return None, ERROR, f"{type(err).__name__}: {err}"
        finally:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
        log.info("converted %s to a universal checkpoint in %.1fs", tag, time.perf_counter() - t0)
        universal = {
            "step": manifest["step"],
            "tag": tag,
            "time": time.time(),
            "world_size": 0,  # loads at any world size
            "source_world_size": manifest["world_size"],
            "source_zero_stage": zero_stage_of(manifest),
            "convert_s": time.perf_counter() - t0,
            "objects": sorted(entries, key=lambda e: e["key"]),
        }
        return (universal, True), "", ""
