"""A real S3 server for tests: SeaweedFS started by `infra/seaweedfs.sh` on 127.0.0.1, never a mock.

`s3_server` (session scope) starts one server on free ports in a temp dir and stops it by PID at the end. If it
cannot start, the fixture raises: S3 tests FAIL, they are never skipped. `s3_env` (function scope) points the
standard boto3 env chain (and MSCA_S3_ENDPOINT) at it, for code that opens stores from config alone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "infra" / "seaweedfs.sh"
# infra/seaweedfs.sh: S3 on PORT, other services on PORT+1..PORT+8 and PORT+10008.
_OFFSETS = list(range(9)) + [10008]


def _ports_free(base: int) -> bool:
    for off in _OFFSETS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", base + off))
            except OSError:
                return False
    return True


def free_port_base(lo: int = 20000, hi: int = 45000) -> int:
    """A base port whose whole SeaweedFS port set is free (random start, so parallel sessions rarely race)."""
    import random

    rnd = random.Random(os.getpid() ^ uuid.uuid4().int)
    for _ in range(200):
        base = rnd.randrange(lo, hi)
        if _ports_free(base):
            return base
    raise RuntimeError("no free port range for SeaweedFS")


@dataclass
class S3Server:
    """Handle to a running server: endpoint, credentials, and helpers to make buckets and stores."""

    endpoint_url: str
    access_key: str
    secret_key: str
    dir: Path
    pid: int
    region: str = "us-east-1"
    _buckets: list = field(default_factory=list)

    @property
    def env(self) -> dict:
        """Env vars that point boto3's standard chain (and msca's endpoint lookup) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "MSCA_S3_ENDPOINT": self.endpoint_url,
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}),
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Create a (by default uniquely named) bucket and return its name."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        self._buckets.append(name)
        return name

    def store(self, uri: str):
        """`msca.storage.open_store(uri)` with this server's endpoint and credentials."""
        from msca.storage import open_store

        return open_store(
            uri,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )


def start_server(workdir: Path) -> S3Server:
    """Start SeaweedFS under `workdir` via the infra script; raises with the log tail if it does not come up."""
    base = free_port_base()
    ak, sk = "msca-test", f"secret-{uuid.uuid4().hex[:16]}"
    env = dict(
        os.environ,
        SEAWEEDFS_PORT=str(base),
        SEAWEEDFS_ACCESS_KEY=ak,
        SEAWEEDFS_SECRET_KEY=sk,
        PYTHON=sys.executable,
        SEAWEEDFS_START_TIMEOUT="60",
    )
    r = subprocess.run(
        ["bash", str(SCRIPT), "start", str(workdir)], env=env, capture_output=True, text=True, timeout=120
    )
    if r.returncode != 0:
        raise RuntimeError(f"SeaweedFS did not start (rc={r.returncode}):\n{r.stdout}\n{r.stderr}")
    pid = int((workdir / "weed.pid").read_text())
    return S3Server(f"http://127.0.0.1:{base}", ak, sk, workdir, pid)


def kill_server(server: S3Server) -> None:
    """SIGKILL the server (a crash, not a shutdown) and wait until its ports are free."""
    import signal
    import time

    os.kill(server.pid, signal.SIGKILL)
    port = int(server.endpoint_url.rsplit(":", 1)[1])
    deadline = time.time() + 30
    while not _ports_free(port) and time.time() < deadline:
        time.sleep(0.1)


def restart_server(server: S3Server) -> None:
    """Start the server again on the same ports, credentials and data (after `kill_server`)."""
    port = int(server.endpoint_url.rsplit(":", 1)[1])
    env = dict(
        os.environ,
        SEAWEEDFS_PORT=str(port),
        SEAWEEDFS_ACCESS_KEY=server.access_key,
        SEAWEEDFS_SECRET_KEY=server.secret_key,
        PYTHON=sys.executable,
        SEAWEEDFS_START_TIMEOUT="60",
    )
    r = subprocess.run(
        ["bash", str(SCRIPT), "start", str(server.dir)], env=env, capture_output=True, text=True, timeout=120
    )
    if r.returncode != 0:
        raise RuntimeError(f"SeaweedFS did not restart (rc={r.returncode}):\n{r.stdout}\n{r.stderr}")
    server.pid = int((server.dir / "weed.pid").read_text())


def stop_server(server: S3Server) -> None:
    env = dict(os.environ, SEAWEEDFS_STOP_TIMEOUT="5")  # test data need no graceful flush
    subprocess.run(["bash", str(SCRIPT), "stop", str(server.dir)], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A running SeaweedFS for the whole session (about 1 s to start, 3 s to stop)."""
    server = start_server(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point the standard boto3 env chain at `s3_server` for one test."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    return s3_server
