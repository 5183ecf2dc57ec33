"""The run home as its lease holder writes it: every write or delete first proves the lease is still ours.

A job whose lease lapsed (a pause longer than the TTL, a partition from the store) may already have a
successor; whatever it wrote after that point could overwrite the successor's manifests, delete its
in-progress step as "torn", or cut its metrics. So rank 0 writes the run home only through a `FencedStore`,
which asks `Lease.fence` (proof by this machine's monotonic clock, msca.runstate.lease) before each mutation
and raises `LeaseLost` instead of writing. Reads pass straight through. The attempt's own ledger record keeps
the raw store: saying how this attempt ended touches nothing a successor owns.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence, Tuple

from msca.storage import Store


class FencedStore(Store):
    def __init__(self, inner: Store, fence: Callable[[str], None]):
        self.inner, self.fence = inner, fence
        self.uri = inner.uri

    def _check(self, doing: str, key: str) -> None:
        self.fence(f"{doing} {self.inner.url(key)}")

    # --- reads: straight through -----------------------------------------------------------------------------
    def child(self, key: str) -> "FencedStore":
        return FencedStore(self.inner.child(key), self.fence)

    def url(self, key: str = "") -> str:
        return self.inner.url(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def read_bytes(self, key: str) -> bytes:
        return self.inner.read_bytes(key)

    def list(self, prefix: str = "") -> list:
        return self.inner.list(prefix)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def download_file(self, key: str, local_path: str) -> None:
        self.inner.download_file(key, local_path)

    def read_versioned(self, key: str) -> Tuple[bytes, str]:
        return self.inner.read_versioned(key)

    def read_many(self, keys: Sequence[str], max_workers: int = 8) -> list:
        return self.inner.read_many(keys, max_workers)

    # --- writes: the lease first ------------------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> None:
        self._check("writing", key)
        self.inner.write_bytes(key, data)

    def delete(self, key: str) -> None:
        self._check("deleting", key)
        self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        self._check("deleting", prefix)
        return self.inner.delete_prefix(prefix)

    def upload_file(self, local_path: str, key: str) -> None:
        self._check("uploading", key)
        self.inner.upload_file(local_path, key)

    def write_many(self, items: Iterable, max_workers: int = 8) -> None:
        self._check("writing", "")
        self.inner.write_many(items, max_workers)

    def write_if_absent(self, key: str, data: bytes) -> bool:
        self._check("writing", key)
        return self.inner.write_if_absent(key, data)

    def write_if_version(self, key: str, data: bytes, version: str) -> bool:
        self._check("writing", key)
        return self.inner.write_if_version(key, data, version)

    def __repr__(self) -> str:
        return f"FencedStore({self.inner!r})"

    def __eq__(self, other) -> bool:
        return self.inner == getattr(other, "inner", other)

    def __hash__(self) -> int:
        return hash(self.inner)
