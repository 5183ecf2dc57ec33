"""Facts about this machine and this checkout, defined once: the repository root (where `jobs` imports from),
its commit, node-local scratch, and what SLURM's `squeue` says of a job."""

from __future__ import annotations

import contextlib
import os
import stat
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


def private_dir(configured: str | None = None, create: bool = True) -> Path:
    """This user's own folder on node-local scratch, `<scratch>/msca-<uid>`: staging and caches live under it,
    never in a shared, predictable folder another local user could read or swap files in (the bytes verified
    must be the bytes loaded). Created 0700; refused unless ours and closed to group and others. With
    create=False (read-only commands) the path is only computed: nothing is made on this machine."""
    path = scratch_dir(configured) / f"msca-{os.getuid()}"
    return ensure_private(path) if create else path


def ensure_private(path: Path) -> Path:
    """Create `path` (0700) if it is absent, then check it is a real folder owned by us with no group/other
    access: anything else is a PermissionError naming the path and the fix (a user error, one line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()  # lstat: a symlink planted by someone else is refused, not followed
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(
            f"{path} is not a folder of yours (owner uid {st.st_uid}, you are {os.getuid()}): another user may "
            f"read or replace files there; remove it or point TMPDIR (or checkpoint.staging_dir) to a private folder"
        )
    if st.st_mode & 0o077:
        raise PermissionError(
            f"{path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}): run `chmod 700 {path}`"
        )
    return path


@contextlib.contextmanager
def private_umask():
    """Files created inside are 0600 (folders 0700): for writers we do not control (DeepSpeed's save). The umask
    is per process, so keep the block short."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def squeue(job_id: str, timeout_s: float) -> subprocess.CompletedProcess | None:
    """`squeue -h -j JOB -o %T` (the job's state), or None when squeue cannot be run."""
    try:
        return subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=timeout_s
        )
    except (OSError, subprocess.SubprocessError):
        return None


def slurm_cluster_name(timeout_s: float = 10) -> str:
    """The SLURM cluster this process is on ("" when there is none or we cannot tell): $SLURM_CLUSTER_NAME inside
    a job, else `ClusterName` from `scontrol show config`. A job id names a job only on its own cluster."""
    if os.environ.get("SLURM_CLUSTER_NAME"):
        return os.environ["SLURM_CLUSTER_NAME"]
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return ""
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        key, _, value = line.partition("=")
        if key.strip() == "ClusterName":
            return value.strip()
    return ""
