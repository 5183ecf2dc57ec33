"""A real two-node Ray cluster for tests: `infra/ray/cluster.sh up2` (head on node1, a worker node on node2, in
Linux namespaces), never a mock; and a SeaweedFS both nodes can reach.

`ray_cluster` (session scope) starts the cluster once (about 12 s, ~1 GB idle, ~3 GB during a 2-worker run) and
stops it by PID at the end. If it cannot start, the fixture raises: Ray tests FAIL, they are never skipped.
`ray_s3` (session scope) is SeaweedFS listening on the namespaces' bridge too (workers on node1/node2 cannot
reach the host's 127.0.0.1), at http://10.78.0.254:PORT.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from s3_server import S3Server, free_port_base, stop_server

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "infra" / "ray" / "cluster.sh"
BRIDGE_IP = "10.78.0.254"


@dataclass
class RayCluster:
    dir: Path
    address: str  # the GCS, host:port
    jobs_address: str  # the head's dashboard (Jobs API), http://host:port

    def on_head(self, *cmd: str) -> list[str]:
        """CMD as a user on the head node runs it (node1's network, hostname and hosts file)."""
        return ["bash", str(SCRIPT), "exec", str(self.dir), *cmd]

    def kill_node2(self) -> None:
        """node2 vanishes: every process in its namespace (raylet, agents, workers) gets SIGKILL."""
        subprocess.run(["bash", str(SCRIPT), "kill-node2", str(self.dir)], check=True, capture_output=True, timeout=60)

    def start_node2(self) -> None:
        """A fresh node2 (empty local disk) joins the head."""
        subprocess.run(
            ["bash", str(SCRIPT), "start-node2", str(self.dir)], check=True, capture_output=True, timeout=120
        )

    def node_pids(self, node: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", f"msca-ray-{node}"], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def train_workers(self, node: str) -> list[int]:
        """PIDs of the Ray Train worker processes on `node`."""
        found = []
        for pid in self.node_pids(node):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "RayTrainWorker" in cmd:
                found.append(pid)
        return found


@pytest.fixture(scope="session")
def ray_cluster():
    state = Path(tempfile.mkdtemp(prefix="msca-ray-", dir="/tmp"))  # short: Ray's unix socket paths
    up = subprocess.run(["bash", str(SCRIPT), "up2", str(state)], capture_output=True, text=True, timeout=300)
    if up.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "down", str(state)], capture_output=True, timeout=120)
        raise RuntimeError(f"the two-node Ray cluster did not start (rc={up.returncode}):\n{up.stdout}\n{up.stderr}")
    exports = dict(
        line[len("export ") :].split("=", 1) for line in up.stdout.splitlines() if line.startswith("export ")
    )
    try:
        yield RayCluster(state, exports["RAY_ADDRESS"], exports["RAY_API_SERVER_ADDRESS"])
    finally:
        subprocess.run(["bash", str(SCRIPT), "down", str(state)], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def ray_s3(ray_cluster, tmp_path_factory):
    """SeaweedFS on the namespaces' bridge address only (the nodes route to it; this host has it too), with a
    random secret, which the cluster's nodes get as a site provisions them: their own credentials file
    (infra/ray/cluster.sh points AWS_SHARED_CREDENTIALS_FILE at it), never through a job's runtime_env."""
    workdir = tmp_path_factory.mktemp("seaweedfs-ray")
    base = free_port_base()
    ak, sk = "msca-test", f"secret-{uuid.uuid4().hex[:16]}"
    env = dict(
        os.environ,
        SEAWEEDFS_PORT=str(base),
        SEAWEEDFS_ACCESS_KEY=ak,
        SEAWEEDFS_SECRET_KEY=sk,
        PYTHON=sys.executable,
        SEAWEEDFS_START_TIMEOUT="60",
        SEAWEEDFS_HOST=BRIDGE_IP,
    )
    r = subprocess.run(
        ["bash", str(REPO / "infra" / "seaweedfs.sh"), "start", str(workdir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode != 0:
        raise RuntimeError(f"SeaweedFS did not start (rc={r.returncode}):\n{r.stdout}\n{r.stderr}")
    server = S3Server(f"http://{BRIDGE_IP}:{base}", ak, sk, workdir, int((workdir / "weed.pid").read_text()))
    creds = ray_cluster.dir / "etc" / "aws-credentials"
    creds.write_text(f"[default]\naws_access_key_id = {ak}\naws_secret_access_key = {sk}\n")
    creds.chmod(0o600)
    try:
        yield server
    finally:
        stop_server(server)
