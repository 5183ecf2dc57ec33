"""What a SLURM preemption costs: signal -> committed checkpoint -> requeue -> first resumed step, split by
cause, and the goodput of a run preempted every N seconds. Needs a running SLURM (SLURM_CONF), e.g. the local
two-node cluster:

    infra/slurm/cluster.sh up /tmp/msca-slurm && export SLURM_CONF=/tmp/msca-slurm/etc/slurm.conf
    python -m msca.bench preempt   # tiny 2-node run, one USR2, then runs preempted every N s and never

Sources: the bench's own clock (signal), checkpoint manifest mtimes (commit), squeue polled every 0.1 s
(requeue seen, scheduler wait), submitit's ms-stamped "Starting with" line (process start), our 1-s-resolution
log lines (distributed init, checkpoint load) and metrics.jsonl (ms-stamped steps).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from msca.bench.tiny import QUIET, TINY_DATA, TINY_MODEL
from msca.runstate.attempts import read_attempts, summarize
from msca.storage import open_store

REPO = Path(__file__).resolve().parents[2]
TINY = [
    *TINY_DATA,
    *TINY_MODEL,
    *QUIET,
    "data.batch_size=2",
    "eval.at_end=false",
    "train.val_every=0",
    "deepspeed=zero2",
    "checkpoint.every_steps=0",
    "checkpoint.every_epochs=0",
    "cluster=slurm",
    "cluster.nodes=2",
    "cluster.tasks_per_node=1",
    "cluster.cpus_per_task=1",
]


def parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m msca.bench preempt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--every-s", type=float, default=10.0, help="goodput run: USR2 this long after each (re)start")
    p.add_argument("--epochs", type=int, default=200, help="goodput run length (6 steps per epoch)")
    p.add_argument("--dir", default=None, help="work folder (default: a new temp folder)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for both runs")
    return p.parse_args(argv)


class Run:
    def __init__(self, tmp: Path, name: str, overrides: list[str]):
        self.tmp, self.name = tmp, name
        self.home = tmp / "store" / "runs" / name
        args = [f"run.name={name}", f"store.root={tmp / 'store'}", f"data.root={tmp / 'data'}", *TINY, *overrides]
        self.t_launch = time.time()
        out = subprocess.run(
            [sys.executable, str(REPO / "launch.py"), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=300,
        )
        if out.returncode:
            raise SystemExit(f"launch failed:\n{out.stdout}\n{out.stderr}")
        self.job = re.search(r"slurm: job (\d+)", out.stdout).group(1)

    def state(self) -> str:
        out = subprocess.run(["squeue", "-h", "-j", self.job, "-o", "%T"], capture_output=True, text=True).stdout
        if out.strip():
            return out.split()[0]
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", self.job, "-o", "State"], capture_output=True, text=True
        ).stdout
        return out.split()[0] if out.split() else "UNKNOWN"

    def steps(self) -> list[dict]:
        path = self.home / "metrics.jsonl"
        if not path.exists():
            return []
        return [m for m in map(json.loads, path.read_text().splitlines()) if m["kind"] == "train"]

    def manifests(self) -> dict[str, float]:
        return {p.parent.name: p.stat().st_mtime for p in (self.home / "checkpoints").glob("step_*/MANIFEST.json")}

    def log(self) -> str:
        path = self.home / "slurm" / f"{self.job}_0_log.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def signal(self) -> float:
        subprocess.run(["scancel", "--signal=USR2", self.job], check=True)
        return time.time()


def stamps(text: str, pattern: str) -> list[float]:
    """Epoch times of our log lines (HH:MM:SS, today) matching pattern."""
    today = datetime.date.today()
    return [
        datetime.datetime.combine(today, datetime.time.fromisoformat(m.group(1))).timestamp()
        for m in re.finditer(rf"^(\d\d:\d\d:\d\d) \w+ .*{pattern}", text, re.M)
    ]


def submitit_starts(text: str) -> list[float]:
    return [
        datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for m in re.finditer(r"submitit INFO \((.+?)\) - Starting with", text)
    ]


def wait(pred, timeout=600.0, poll=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError("benchmark run did not get there in time")


def round_trip(run: Run, at_step: int = 5) -> dict:
    """One USR2 on a running job, timed through to its first resumed step."""
    wait(lambda: run.steps() and run.steps()[-1]["step"] >= at_step, poll=0.02)
    before = run.manifests()
    t_sig = run.signal()
    t_commit = wait(lambda: max((t for k, t in run.manifests().items() if k not in before), default=0), poll=0.02)
    t_left = wait(lambda: time.time() if run.state() != "RUNNING" else 0, poll=0.05)
    t_running = wait(lambda: time.time() if run.state() == "RUNNING" else 0, poll=0.1)
    stop = int(re.search(r"saving step (\d+)", run.log()).group(1))
    first = wait(lambda: next((m["time"] for m in run.steps() if m["step"] == stop + 1), 0), poll=0.1)
    text = run.log()
    start = submitit_starts(text)[-1]
    dist_up = stamps(text, r"rank\(s\) on")[-1]
    loaded = stamps(text, "resumed from")[-1]
    return {
        "stop step": stop,
        "signal -> commit": t_commit - t_sig,
        "commit -> requeued (seen)": t_left - t_commit,
        "scheduler wait": t_running - t_left,
        "process start": start - t_running,
        "imports + distributed init (1 s res.)": dist_up - start,
        "model + engine build + checkpoint load (1 s res.)": loaded - dist_up,
        "first step": first - loaded,
        "signal -> first resumed step": first - t_sig,
    }


def goodput(run: Run, every_s: float) -> dict:
    """USR2 every `every_s` seconds of each attempt's training until the run completes."""
    stops = 0
    while True:
        attempt_start = wait(lambda: (run.steps() or [{}])[-1].get("time") if run.state() == "RUNNING" else None)
        while run.state() == "RUNNING" and time.time() - attempt_start < every_s:
            time.sleep(0.2)
        if run.state() != "RUNNING":
            break
        run.signal()
        stops += 1
        wait(lambda: run.state() != "RUNNING", timeout=120)
        done = wait(lambda: run.state() in ("RUNNING", "COMPLETED", "FAILED", "CANCELLED") and run.state())
        if done != "RUNNING":
            break
        n = len(run.steps())
        wait(lambda n=n: len(run.steps()) > n or run.state() != "RUNNING")
    state = wait(lambda: run.state() if run.state() in ("COMPLETED", "FAILED", "CANCELLED") else None)
    steps = run.steps()
    times = [m["time"] for m in steps]
    gaps = [b - a for a, b in zip(times, times[1:])]
    typical = statistics.median(gaps)
    productive = sum(g for g in gaps if g < 10 * typical) + typical  # gaps across a restart are not training
    wall = max(times) - run.t_launch
    ledger = summarize(read_attempts(open_store(str(run.home))))  # the run's own attempt ledger (issue 8)
    return {
        "state": state,
        "steps": len(steps),
        "preemptions": stops,
        "median step s": typical,
        "productive s": productive,
        "wall s (launch -> last step)": wall,
        "goodput": productive / wall,
        "attempts (ledger)": ledger["attempts"],
        "goodput (ledger, job wall)": ledger["goodput"],
        **{f"badput {k} (ledger)": v for k, v in ledger["badput"].items()},
    }


def main(argv=None) -> int:
    args = parse(argv)
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode:
        print(
            "no SLURM controller reachable: start one (infra/slurm/cluster.sh up DIR) and export SLURM_CONF",
            file=sys.stderr,
        )
        return 2
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="msca-bench-preempt-"))
    rt = round_trip(Run(tmp, "roundtrip", ["train.epochs=40", *args.overrides]))
    print("\n| USR2 round trip (2 nodes x 1 task) | seconds |\n|---|---|")
    for k, v in rt.items():
        print(f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |")
    rows = {
        f"preempted every {args.every_s:.0f} s": goodput(
            Run(tmp, "goodput", [f"train.epochs={args.epochs}", *args.overrides]), args.every_s
        ),
        "never preempted": goodput(
            Run(tmp, "baseline", [f"train.epochs={args.epochs}", *args.overrides]), float("inf")
        ),
    }
    keys = list(next(iter(rows.values())))
    print(f"\n| goodput, {args.epochs} epochs | " + " | ".join(rows) + " |\n|---|" + "---|" * len(rows))
    for k in keys:
        print(
            f"| {k} | "
            + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for r in rows.values())
            + " |"
        )
    return 0
