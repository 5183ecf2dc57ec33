"""Bad input is one line (issue 17): an unsafe run.name, and `cluster=slurm` on a machine without SLURM; the
sbatch script quotes every path. Real `python launch.py` processes; no SLURM cluster is needed (or wanted)."""

import subprocess
import sys

import pytest
from launch_helpers import REPO, run_launch
from test_launch import assert_one_line_error

pytestmark = pytest.mark.slow  # real processes: launch.py


@pytest.mark.parametrize("name", ["a b", "'$(id)'", "../x", ".hidden", "-x", "a/b", "x" * 129])
def test_unsafe_run_names_are_one_line_and_write_nothing(tmp_path, name):
    proc = run_launch([f"store.root={tmp_path / 'store'}", f"run.name={name}", "cluster.dry_run=true"], timeout=60)
    assert_one_line_error(proc, "run.name=", "letters, digits, '.', '_' or '-'")
    assert not (tmp_path / "store").exists()


@pytest.fixture
def no_slurm_path(tmp_path):
    """A PATH with python and nothing else: no sbatch, no srun, no git (git_sha tolerates its absence)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    return {"PATH": str(bin_dir)}


def test_dry_run_prints_a_quoted_sbatch_script_without_slurm(tmp_path, no_slurm_path):
    """The store root has a space and a `$(...)`: the script parses, and its exports set exactly the paths
    (nothing split, nothing run)."""
    store = tmp_path / "my store $(touch pwned)"
    proc = run_launch(
        [f"store.root='{store}'", "run.name=ok", "cluster=slurm", "cluster.dry_run=true"],
        env=no_slurm_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    script = proc.stdout[proc.stdout.index("#!/bin/bash") :]
    assert "#SBATCH --nodes=1" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    exports = [line for line in script.splitlines() if line.startswith("export ")]
    shown = subprocess.run(
        ["bash", "-c", "\n".join(exports) + '\nprintf "%s\\n" "$MSCA_ERROR_DIR" "$PYTHONPATH"'],
        cwd=tmp_path,
        env={"SLURM_JOB_ID": "7", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert shown.stdout.splitlines() == [f"{store}/runs/ok/slurm/errors-7", str(REPO)]
    assert not list(tmp_path.rglob("pwned")) and not store.exists()  # nothing ran, nothing written


def test_submit_without_slurm_is_one_line(tmp_path, no_slurm_path):
    proc = run_launch(
        [f"store.root={tmp_path / 'store'}", "run.name=ok", "cluster=slurm"], env=no_slurm_path, timeout=60
    )
    assert_one_line_error(proc, "cluster=slurm", "`sbatch`", "SLURM login node")
    assert "srun" in proc.stderr and not (tmp_path / "store").exists()
