"""Facts about this machine and this checkout, defined once: the repository root (where `jobs` imports from),
its commit, node-local scratch, and what SLURM's `squeue` says of a job."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # launch.py, jobs/ and configs/ live here


def git_sha() -> str | None:
    """This checkout's commit; where launch.py runs from a copy without .git (a Ray job's upload), the commit
    the submitting launch.py ran (MSCA_GIT_SHA)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return sha or os.environ.get("MSCA_GIT_SHA") or None


def scratch_dir(configured: str | None = None) -> Path:
    """Node-local scratch: `configured`, else $SLURM_TMPDIR, else $TMPDIR / the system temp dir. Never $HOME,
    which clusters share over NFS with a quota."""
    return Path(os.path.expanduser(configured or os.environ.get("SLURM_TMPDIR") or tempfile.gettempdir()))


def squeue(job_id: str, timeout_s: float) -> subprocess.CompletedProcess | None:
    """`squeue -h -j JOB -o %T` (the job's state), or None when squeue cannot be run."""
    try:
        return subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=timeout_s
        )
    except (OSError, subprocess.SubprocessError):
        return None
