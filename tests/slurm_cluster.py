"""A real two-node SLURM for tests: `infra/slurm/cluster.sh` (ctl + node1 + node2 in Linux namespaces, with
slurmdbd so job states are exact), never a mock.

`slurm_cluster` (session scope) installs the packages if needed, starts the cluster once and stops it by PID at
the end. If it cannot start, the fixture raises: SLURM tests FAIL, they are never skipped.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "infra" / "slurm" / "cluster.sh"


@dataclass
class SlurmCluster:
    dir: Path

    @property
    def env(self) -> dict:
        """What a client (sbatch, squeue, submitit, launch.py) needs to talk to this cluster."""
        return {"SLURM_CONF": str(self.dir / "etc" / "slurm.conf")}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command (squeue, scancel, scontrol, sacct) against this cluster."""
        return subprocess.run(
            list(cmd), env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60, check=check
        )


@pytest.fixture(scope="session")
def slurm_cluster():
    """The two-node cluster for the whole session (about 5 s to start from installed packages, 3 s to stop)."""
    # not under pytest's tmp dirs: they are 0700, and munged/MariaDB run as their own users
    state = Path(tempfile.mkdtemp(prefix="msca-slurm-"))
    state.chmod(0o755)
    up = subprocess.run(["bash", str(SCRIPT), "up", str(state)], capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "down", str(state)], capture_output=True, timeout=120)
        raise RuntimeError(f"the two-node SLURM did not start (rc={up.returncode}):\n{up.stdout}\n{up.stderr}")
    try:
        yield SlurmCluster(state)
    finally:
        subprocess.run(["bash", str(SCRIPT), "down", str(state)], capture_output=True, timeout=120)
