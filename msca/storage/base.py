"""The `Store` interface: a root URI plus '/'-separated keys, the errors every store raises, and the per-process
thread pool that many-key reads and writes share (executor threads do not survive a fork, so the pool is keyed
by pid)."""

from __future__ import annotations

import os
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union


class StoreAuthError(PermissionError):
    """The server rejected our credentials (wrong key/secret, no credentials, or no permission)."""


class ConditionalWritesUnsupported(ValueError):
    """The store cannot refuse a write whose precondition fails, so it cannot guarantee one writer per run."""


class BucketNotFoundError(LookupError):
    """The bucket named in an s3:// URI does not exist on the endpoint."""


def is_remote(uri: Union[str, os.PathLike]) -> bool:
    """True for object-store URIs (s3://), False for local/shared-filesystem paths."""
    return str(uri).startswith("s3://")


def clean_key(key: str) -> str:
    """Normalise a relative key; refuse keys that would escape the root."""
    key = str(key).replace(os.sep, "/").strip("/")
    if not key:
        return ""
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"store keys may not contain '..': {key!r}")
    return "/".join(parts)


_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()


def _pool(max_workers: int) -> ThreadPoolExecutor:
    """A per-process, per-size thread pool (executor threads do not survive fork, so key by pid)."""
    k = (os.getpid(), max_workers)
    pool = _POOLS.get(k)
    if pool is None:
        with _POOLS_LOCK:
            pool = _POOLS.get(k)
            if pool is None:
                pool = _POOLS[k] = ThreadPoolExecutor(max_workers, thread_name_prefix="msca-store")
    return pool


class Store:
    """A root URI plus '/'-separated keys relative to it. Subclasses: `LocalStore`, `S3Store`."""

    uri: str

    # --- per-backend primitives -------------------------------------------------------------------------------
    def child(self, key: str) -> "Store":
        raise NotImplementedError

    def url(self, key: str = "") -> str:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object (a frame pack's span): fewer when the object is shorter, so a
        caller can tell an index that disagrees with the object from a read error."""
        return self.read_bytes(key)[start:end]

    def write_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def list(self, prefix: str = "") -> list:
        raise NotImplementedError

    def size(self, key: str) -> int:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def upload_file(self, local_path: str, key: str) -> None:
        raise NotImplementedError

    def download_file(self, key: str, local_path: str) -> None:
        raise NotImplementedError

    # Conditional writes (leases): a version is an opaque token of one object's content (S3: its ETag).
    def read_versioned(self, key: str) -> Tuple[bytes, str]:
        raise NotImplementedError

    def write_if_absent(self, key: str, data: bytes) -> bool:
        raise NotImplementedError

    def write_if_version(self, key: str, data: bytes, version: str) -> bool:
        raise NotImplementedError

    def check_conditional_writes(self) -> None:
        """Raise ConditionalWritesUnsupported unless the two conditional writes really are conditional here
        (a store that ignores them would let two jobs both take a run's lease, silently)."""

    # --- shared helpers -----------------------------------------------------------------------------------------
    def read_text(self, key: str, encoding: str = "utf-8") -> str:
        return self.read_bytes(key).decode(encoding)

    def write_text(self, key: str, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(key, text.encode(encoding))

    def read_many(self, keys: Sequence[str], max_workers: int = 8) -> list:
        """Fetch keys concurrently (a clip's frames); each result is the bytes or the exception raised.

        Returned in the order of `keys`. Errors are values, not raised, so a caller can replace one bad frame
        without losing the others.
        """
        keys = list(keys)
        if max_workers <= 1 or len(keys) <= 1:
            return [self._read_or_error(k) for k in keys]
        return list(_pool(max_workers).map(self._read_or_error, keys))

    def _read_or_error(self, key: str):
        try:
            return self.read_bytes(key)
        except Exception as e:  # noqa: BLE001 - handed back to the caller by design
            return e

    def _range_or_error(self, key: str, start: int, end: int):
        try:
            return self.read_range(key, start, end)
        except Exception as e:  # noqa: BLE001 - handed back to the caller by design
            return e

    def read_ranges(self, key: str, spans: Sequence[Tuple[int, int]]) -> list:
        """Bytes of each [start, end) of `spans` in one object (a clip's frames in a pack); like `read_range`
        for each, which stores that can fetch them concurrently from one call do (S3: obstore)."""
        return [self.read_range(key, a, b) for a, b in spans]

    def _ranges_or_error(self, key: str, spans):
        try:
            return self.read_ranges(key, spans)
        except Exception as e:  # noqa: BLE001 - handed back to the caller by design
            return e

    def submit_read_ranges(self, key: str, spans, max_workers: int = 8) -> Future:
        """Start `read_ranges` in the background; the result is the list of bytes or the exception."""
        return _pool(max_workers).submit(self._ranges_or_error, key, spans)

    def submit_read_range(self, key: str, start: int, end: int, max_workers: int = 8) -> Future:
        """Start reading bytes [start, end) of `key` in the background; the result is the bytes or the exception."""
        return _pool(max_workers).submit(self._range_or_error, key, start, end)

    def submit_read(self, key: str, max_workers: int = 8) -> Future:
        """Start reading `key` in the background; the future's result is the bytes or the exception."""
        return _pool(max_workers).submit(self._read_or_error, key)

    def iter_many(
        self, keys: Sequence[str], max_workers: int = 8, started: Optional[dict] = None
    ) -> Iterator[Tuple[int, object]]:
        """Like `read_many`, but yields (position, bytes | exception) as each read completes, so a caller can
        decode one frame while the others are still in flight. `started` maps keys to futures from
        `submit_read` (read-ahead); those are used instead of new reads."""
        keys = list(keys)
        started = started or {}
        if (max_workers <= 1 or len(keys) <= 1) and not started:
            for i, k in enumerate(keys):
                yield i, self._read_or_error(k)
            return
        futures = {(started.pop(k, None) or self.submit_read(k, max_workers)): i for i, k in enumerate(keys)}
        for f in as_completed(futures):
            yield futures[f], f.result()

    def write_many(self, items: Iterable, max_workers: int = 8) -> None:
        """Write (key, bytes) pairs concurrently; raises the first error."""
        items = list(items)
        if max_workers <= 1:
            for k, d in items:
                self.write_bytes(k, d)
            return
        for f in [_pool(max_workers).submit(self.write_bytes, k, d) for k, d in items]:
            f.result()

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under the folder `prefix`; returns how many were deleted."""
        keys = self.list(prefix)
        for k in keys:
            self.delete(k)
        return len(keys)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.uri == other.uri

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.uri))


def atomic_copy(write, local_path: str) -> None:
    """Write a local file via `write(tmp_path)` then rename, so a crash never leaves half a file."""
    d = os.path.dirname(os.path.abspath(local_path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".dl-")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, local_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
