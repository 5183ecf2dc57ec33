"""What each backend costs: time from `python launch.py` to the first training step, and per-step time, for the
local, slurm and ray backends side by side, on the same run (tiny MSCA, synthetic data, 2 ranks, gloo).

    python -m msca.bench launch                                   # local and ray (a private local Ray)
    python -m msca.bench launch --ray-address 127.0.0.1:6379      # ray on an existing cluster instead
    python -m msca.bench launch --jobs-api http://10.78.0.1:8265 # also ray-jobs: launch.py through the Jobs API
    SLURM_CONF=... python -m msca.bench launch --slurm            # also slurm (cluster.wait=true)

Each backend runs `launch.py` as a user would (a subprocess); the first step's and every later step's wall time
come from the run's metrics.jsonl (`time` per step). Per-step overhead is the median step time relative to local
(the same model, data and world size, so any difference is the backend's: process placement, thread counts,
Ray's worker actors). Rounds are interleaved so a busy machine penalises every backend alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from msca.bench.tiny import QUIET, TINY_DATA, TINY_MODEL

REPO = Path(__file__).resolve().parents[2]
TINY = [
    *TINY_DATA,
    *TINY_MODEL,
    *QUIET,
    "data.batch_size=2",
    "eval.plots=false",
    "eval.at_end=false",
    "train.val_every=0",
    "checkpoint.every_steps=0",
    "checkpoint.every_epochs=0",
    "deepspeed=zero2",
]


def parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m msca.bench launch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=4, help="epochs per run (6 steps each with the tiny data)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (medians reported)")
    p.add_argument("--ray-address", default="", help="an existing Ray cluster (default: launch.py starts one)")
    p.add_argument(
        "--jobs-api",
        default="",
        help="also ray-jobs: submit to this Jobs API address (wait=true; "
        "the store and data folders must be ones the cluster's nodes see)",
    )
    p.add_argument("--slurm", action="store_true", help="also slurm (needs SLURM_CONF or a cluster's clients)")
    p.add_argument("--nodes", type=int, default=1, help="slurm: nodes (2 ranks in all)")
    p.add_argument("--workdir", default=None, help="data and run homes (default: a temp folder)")
    p.add_argument("overrides", nargs="*", help="more Hydra overrides for every backend")
    return p.parse_args(argv)


def backend_overrides(name: str, args) -> list[str]:
    if name == "local":
        return ["cluster.procs_per_node=2"]
    if name == "ray":
        return ["cluster=ray", "cluster.num_workers=2", f"cluster.address={args.ray_address}"]
    if name == "ray-jobs":
        return ["cluster=ray", "cluster.num_workers=2", f"cluster.address={args.jobs_api}", "cluster.wait=true"]
    per_node = 2 // args.nodes
    return [
        "cluster=slurm",
        "cluster.wait=true",
        f"cluster.nodes={args.nodes}",
        f"cluster.tasks_per_node={per_node}",
        "cluster.cpus_per_task=1",
    ]


def run_once(name: str, args, work: Path, tag: str) -> dict:
    run = f"{name}-{tag}"
    overrides = [
        f"run.name={run}",
        f"store.root={work / 'store'}",
        f"data.root={work / 'data'}",
        f"train.epochs={args.epochs}",
        *TINY,
        *backend_overrides(name, args),
        *args.overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch.py"), *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.time() - t0
    if proc.returncode:
        raise RuntimeError(f"{name}: launch.py exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    path = work / "store" / "runs" / run / "metrics.jsonl"
    times = [json.loads(line)["time"] for line in path.read_text().splitlines() if '"train"' in line]
    steps = [b - a for a, b in zip(times, times[1:])]
    return {
        "first_step_s": times[0] - t0,
        "step_ms": 1000 * statistics.median(steps),
        "wall_s": wall,
        "steps": len(times),
    }


def main(argv=None) -> int:
    args = parse(argv or [])
    backends = ["local", "ray"] + (["ray-jobs"] if args.jobs_api else []) + (["slurm"] if args.slurm else [])
    work = Path(args.workdir or tempfile.mkdtemp(prefix="msca-bench-launch-"))
    run_once("local", args, work, "warmup")  # writes the synthetic data once; not timed
    results: dict[str, list[dict]] = {b: [] for b in backends}
    for r in range(args.rounds):
        for b in backends:
            results[b].append(run_once(b, args, work, f"r{r}"))
            print(f"round {r + 1}/{args.rounds} {b}: {results[b][-1]}", file=sys.stderr, flush=True)
    med = {
        b: {k: statistics.median(x[k] for x in rs) for k in ("first_step_s", "step_ms", "wall_s")}
        for b, rs in results.items()
    }
    base = med["local"]["step_ms"]
    ray_where = args.ray_address or "private local Ray started by launch.py"
    print(f"{'backend':<9} {'launch->1st step':>17} {'step (median)':>14} {'vs local':>9} {'launch->exit':>13}")
    for b in backends:
        m = med[b]
        print(
            f"{b:<9} {m['first_step_s']:>16.1f}s {m['step_ms']:>12.1f}ms {m['step_ms'] / base - 1:>+8.1%} "
            f"{m['wall_s']:>12.1f}s"
        )
    print(
        f"(2 ranks, gloo, {results['local'][0]['steps']} steps per run, medians of {args.rounds} interleaved "
        f"rounds; ray: {ray_where}" + (f"; ray-jobs: {args.jobs_api}" if args.jobs_api else "") + ")"
    )
    return 0
