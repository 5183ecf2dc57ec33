"""Run `python launch.py` for real (subprocess, as a user would) with laptop-small overrides (msca.bench.tiny)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from msca.bench.tiny import QUIET, TINY_DATA, TINY_MODEL

REPO = Path(__file__).resolve().parents[1]


def small_overrides(tmp: Path, data_root: Path, name: str) -> list[str]:
    return [
        f"run.name={name}",
        f"store.root={tmp / 'store'}",
        f"data.root={data_root}",
        *TINY_DATA,
        "data.batch_size=4",
        "data.eval_batch_size=4",
        "data.test_clips=1",
        "data.test_crops=1",
        *QUIET,
        "eval.plots=false",
        *TINY_MODEL,
    ]


def run_launch(
    overrides: list[str], env: dict | None = None, timeout: int = 300, wrap: tuple = ()
) -> subprocess.CompletedProcess:
    """launch.py in its own session, so a hung run is killed with all of its ranks (not just launch.py,
    which would leave the ranks spinning on the test machine's cores), then the test fails."""
    proc = start_launch(overrides, env, wrap, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"launch.py did not finish in {timeout}s (killed with its ranks)\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start_launch(
    overrides: list[str], env: dict | None = None, wrap: tuple = (), merged: bool = False, **popen
) -> subprocess.Popen:
    """launch.py in the background, as a user starts it, for tests that signal or kill it mid-run. `wrap` runs
    it through another command (a cluster node's exec); stdout and stderr (or both merged) come on pipes: read
    them with communicate()."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        [*wrap, sys.executable, str(REPO / "launch.py"), *overrides],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True,
        **popen,
    )


def metrics(store: Path, name: str) -> list[dict]:
    path = store / "runs" / name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]
