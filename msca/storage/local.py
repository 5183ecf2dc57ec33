"""`LocalStore`: a directory on a local or shared filesystem, with the same atomic writes and conditional
writes (for the lease) as an object store."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from typing import Tuple

from msca.storage.base import Store, atomic_copy, clean_key


class LocalStore(Store):
    """A directory on a local or shared filesystem. Writes are atomic (temp file + os.replace)."""

    def __init__(self, root: str):
        self.root = root
        self.uri = root

    def _path(self, key: str) -> str:
        key = clean_key(key)
        return os.path.join(self.root, *key.split("/")) if key else self.root

    def child(self, key: str) -> "LocalStore":
        return LocalStore(self._path(key))

    def url(self, key: str = "") -> str:
        return self._path(key)

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise FileNotFoundError(f"{path}: is a directory, not a file") from None

    def read_range(self, key: str, start: int, end: int) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return os.pread(f.fileno(), max(0, end - start), start)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise FileNotFoundError(f"{path}: is a directory, not a file") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            for attempt in range(3):  # a concurrent delete() may prune the folder we just made
                os.makedirs(os.path.dirname(path), exist_ok=True)
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def list(self, prefix: str = "") -> list:
        base = self._path(prefix)
        if os.path.isfile(base):
            return [clean_key(prefix)]
        out = []
        for dirpath, _, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for name in files:
                if ".tmp-" in name:  # an in-flight atomic write
                    continue
                out.append(name if rel == "." else f"{rel}/{name}")
        return sorted(out)

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            return os.path.getsize(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None

    def delete(self, key: str) -> None:
        """Remove the file and the folders it leaves empty (object-store semantics: no empty 'folders')."""
        path = self._path(key)
        try:
            os.remove(path)
        except FileNotFoundError:
            return
        parent, root = os.path.dirname(path), os.path.abspath(self.root)
        while os.path.abspath(parent).startswith(root + os.sep):
            try:
                os.rmdir(parent)
            except OSError:  # not empty (or gone)
                break
            parent = os.path.dirname(parent)

    def read_versioned(self, key: str) -> Tuple[bytes, str]:
        data = self.read_bytes(key)
        return data, hashlib.sha256(data).hexdigest()

    def write_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` with `data` unless it exists: the content is written to a temp file, then hard-linked
        into place (link(2) fails if the name exists, atomically, also on NFS)."""
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)

    def write_if_version(self, key: str, data: bytes, version: str) -> bool:
        """Replace `key` only if its content still has `version` (compare and swap under an flock)."""
        import fcntl

        path = self._path(key)
        with open(f"{path}.tmp-lock", "a+b") as lock:  # ".tmp-": list() never shows it
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = self.read_versioned(key)[1]
            except FileNotFoundError:
                return False
            if current != version:
                return False
            self.write_bytes(key, data)
            return True

    def upload_file(self, local_path: str, key: str) -> None:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, path)

    def download_file(self, key: str, local_path: str) -> None:
        src = self._path(key)
        if not os.path.isfile(src):
            raise FileNotFoundError(f"{src}: no such file")
        atomic_copy(lambda tmp: shutil.copyfile(src, tmp), local_path)
