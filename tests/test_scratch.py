"""Private, per-user scratch (issue 17): staging and caches under `<scratch>/msca-<uid>` (0700, checked to be
ours), staged files 0600, and read-only commands that create nothing. Real processes, a real second Unix user
(created with `useradd -M msca-test-2` where absent; needs root), a real S3 server."""

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from launch_helpers import REPO, run_launch, small_overrides
from test_launch import assert_one_line_error

pytestmark = pytest.mark.slow  # real processes: launch.py and its ranks

SECOND_USER = "msca-test-2"
COMMON = [
    "cluster.procs_per_node=1",
    "train.val_every=0",
    "eval.at_end=false",
    "data.batch_size=2",
    "train.max_steps=2",
    "checkpoint.every_steps=1",
]


@pytest.fixture(scope="module")
def second_user() -> tuple[int, int]:
    """(uid, gid) of a second local user, as on a shared node."""
    if os.getuid() != 0:
        pytest.skip("needs root: runs processes as a second Unix user")
    if subprocess.run(["id", SECOND_USER], capture_output=True).returncode:
        subprocess.run(["useradd", "-M", SECOND_USER], check=True)
    entry = pwd.getpwnam(SECOND_USER)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def shared_scratch():
    """A node-local scratch every user shares, like /tmp (1777); pytest's tmp_path is closed to other users."""
    path = Path(tempfile.mkdtemp(prefix="msca-scratch-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_user(user: tuple[int, int], cmd: list, **kwargs) -> subprocess.CompletedProcess:
    uid, gid = user
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    return subprocess.run([*setpriv, *map(str, cmd)], capture_output=True, text=True, **kwargs)


def python_for(user: tuple[int, int], home: Path) -> str:
    """An interpreter the user can run with this venv's packages: ours, or (where ours sits in a folder closed to
    others, e.g. pyenv under /root) the system's python of the same version with a .pth naming our site-packages."""
    probe = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import msca'], check=True)"
    if as_user(user, [sys.executable, "-c", probe], cwd=REPO).returncode == 0:  # ranks start the same way
        return sys.executable
    base = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    venv = home / "venv"
    as_user(user, [base, "-m", "venv", "--without-pip", venv], check=True)
    import site

    pth = next(venv.glob("lib/python*/site-packages")) / "msca-venv.pth"
    as_user(user, ["sh", "-c", f'echo "import site; site.addsitedir({site.getsitepackages()[0]!r})" > {pth}'])
    return str(venv / "bin" / "python")


def env_for(s3_server, scratch: Path, **extra) -> dict:
    """The user's environment: S3 credentials, scratch = TMPDIR (no MSCA_CACHE or SLURM_TMPDIR overriding it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MSCA_CACHE", "SLURM_TMPDIR", "MSCA_FAULT_INJECT")}
    return {**env, **s3_server.env, "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1", **extra}


def s3_overrides(tmp: Path, data: Path, root: str, name: str) -> list[str]:
    local = [o for o in small_overrides(tmp, data, name) if not o.startswith("store.root=")]
    return local + COMMON + [f"store.root={root}"]


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): stat.S_IMODE(p.lstat().st_mode) for p in sorted(path.rglob("*"))}


def test_second_user_cannot_read_the_first_users_staging_and_runs_its_own(
    tmp_path, s3_server, shared_scratch, second_user
):
    bucket = s3_server.make_bucket()
    root = f"s3://{bucket}/team"
    # user 1 (root): its commit fails, so its staged checkpoint stays on the node's scratch
    first = run_launch(
        s3_overrides(tmp_path, tmp_path / "data", root, "first"),
        env=env_for(s3_server, shared_scratch, MSCA_FAULT_INJECT="committing checkpoint@0"),
    )
    assert first.returncode not in (0, 3), first.stdout + first.stderr
    mine = shared_scratch / f"msca-{os.getuid()}"
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700 and mine.stat().st_uid == os.getuid()
    staged = [p for p in (mine / "staging").rglob("*") if p.is_file()]
    assert any(p.name.endswith("model_states.pt") for p in staged), tree(mine)
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in staged} == {"0o600"}

    # user 2 cannot list, read or plant files in user 1's staging
    victim = next(p for p in staged if p.name.endswith("model_states.pt"))
    for cmd in (["ls", mine], ["cat", victim], ["touch", victim.parent / "planted"]):
        denied = as_user(second_user, cmd)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, (cmd, denied)

    # ... and runs its own on the same node and scratch, with its own private folder
    home = shared_scratch / "home-2"
    home.mkdir(mode=0o700)
    os.chown(home, *second_user)
    python = python_for(second_user, home)
    overrides = s3_overrides(home, home / "data", root, "second")
    env = env_for(s3_server, shared_scratch, HOME=str(home))
    second = as_user(second_user, [python, REPO / "launch.py", *overrides], cwd=REPO, env=env, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert s3_server.store(f"{root}/runs/second").exists("checkpoints/step_000000002/MANIFEST.json")
    theirs = shared_scratch / f"msca-{second_user[0]}"
    assert theirs.stat().st_uid == second_user[0] and stat.S_IMODE(theirs.stat().st_mode) == 0o700


@pytest.mark.parametrize("problem", ["open to all", "another user's"])
def test_a_scratch_folder_not_ours_is_refused_in_one_line(tmp_path, s3_server, shared_scratch, second_user, problem):
    """A pre-created `<scratch>/msca-<uid>` that others could read or swap files in is refused before anything
    is written to the run home."""
    planted = shared_scratch / f"msca-{os.getuid()}"
    planted.mkdir()
    if problem == "open to all":
        planted.chmod(0o777)
    else:
        planted.chmod(0o700)
        os.chown(planted, *second_user)
    bucket = s3_server.make_bucket()
    proc = run_launch(
        s3_overrides(tmp_path, tmp_path / "data", f"s3://{bucket}/team", "refused"),
        env=env_for(s3_server, shared_scratch),
        timeout=120,
    )
    fix = "chmod 700" if problem == "open to all" else "not a folder of yours"
    assert_one_line_error(proc, str(planted), fix)
    assert not s3_server.store(f"s3://{bucket}/team/runs/refused").exists("config.yaml")
    assert list(planted.iterdir()) == []


def test_ls_and_show_of_an_s3_run_create_nothing_here(tmp_path, s3_server, shared_scratch):
    """`python -m msca.runs ls/show` read the store: the machine they run on gets no staging or cache folder."""
    bucket = s3_server.make_bucket()
    root = f"s3://{bucket}/team"
    run = run_launch(s3_overrides(tmp_path, tmp_path / "data", root, "done"), env=env_for(s3_server, shared_scratch))
    assert run.returncode == 0, run.stdout + run.stderr
    before = tree(shared_scratch)
    reader = tmp_path / "reader-scratch"  # another machine's scratch, still empty
    reader.mkdir()
    for args in (["ls", root], ["show", f"{root}/runs/done"]):
        out = subprocess.run(
            [sys.executable, "-m", "msca.runs", *args],
            cwd=REPO,
            env=env_for(s3_server, reader),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0 and "finished" in out.stdout, out.stdout + out.stderr
    assert tree(reader) == {} and tree(shared_scratch) == before
