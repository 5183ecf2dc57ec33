"""What is in a store, read from the store alone (any machine, any backend):

    python -m msca.runs ls [STORE_ROOT]            every run: status, step / total, newest checkpoint, goodput
    python -m msca.runs show RUN [--deep]           one run: attempts, goodput and badput, last metrics
    python -m msca.runs checkpoints RUN [--deep]    one run's checkpoints: step, time, size, complete or torn

STORE_ROOT defaults to $MSCA_STORE_ROOT or `outputs`; RUN is a run name under it or a run URI (a path or
s3://...). `--deep` checks sha256 checksums too (reads every byte), not only sizes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

from msca.runstate.attempts import Attempt, read_attempts, summarize
from msca.runstate.checkpoint import MANIFEST, CheckpointManager
from msca.runstate.home import RunHome, run_uri
from msca.runstate.lease import read_lease
from msca.runstate.metrics import read_metrics
from msca.runstate.session import LEASE_TTL_S
from msca.storage import is_remote, open_store


def status(home: RunHome, attempts: list[Attempt]) -> str:
    """running (lease age) | finished | stopped | failed: cause | vanished | launched."""
    holder, _ = read_lease(home.store)  # a listing cannot watch each lease for a TTL: its own clock, shown only
    if (
        holder is not None
        and not holder.released
        and not holder.died_here()
        and time.time() - holder.renewed < LEASE_TTL_S
    ):
        return f"running ({holder.backend} {holder.job_key}, lease {holder.renewed_ago()})"
    if not attempts:
        return "launched, never started" if home.exists() else "no run here"
    last = attempts[-1]
    if last.end_reason == "failed":
        return f"failed: {last.error.splitlines()[0] if last.error else 'unknown cause'}"
    if last.end_reason in ("finished", "stopped"):
        return last.end_reason
    return f"vanished (no end recorded; last heartbeat {ago(last.heartbeat)})"


def ago(t: float) -> str:
    s = max(0, time.time() - t)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.1f} h ago"


def newest_checkpoint(ckpt: CheckpointManager, deep: bool) -> str:
    steps = ckpt.committed_steps()
    if not steps:
        return "-"
    problem = ckpt.verify(steps[-1], deep=deep)
    return f"{steps[-1]} ({'verifies' if not problem else 'BROKEN: ' + problem})"


def last_metrics(records: list[dict]) -> str:
    train = next((r for r in reversed(records) if r["kind"] == "train"), None)
    val = next((r for r in reversed(records) if r["kind"] == "val"), None)
    parts = [f"loss {train['loss']:.3f}" if train else "", f"val top-1 {100 * val['top1']:.1f}%" if val else ""]
    return ", ".join(p for p in parts if p) or "-"


def table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_names(store_root: str) -> list[str]:
    store = open_store(store_root)
    return sorted(
        {key.split("/", 2)[1] for key in store.list("runs") if key.endswith("/config.yaml") and key.count("/") == 2}
    )


def cmd_ls(store_root: str, deep: bool) -> str:
    rows = [("run", "status", "step", "checkpoint", "attempts", "goodput", "last metrics")]
    for name in run_names(store_root):
        home = RunHome(run_uri(store_root, name))
        attempts = read_attempts(home.store)
        ckpt = CheckpointManager(None, home)
        step = f"{attempts[-1].last_step}/{attempts[-1].total_steps}" if attempts else "-"
        goodput = f"{100 * summarize(attempts)['goodput']:.0f}%" if attempts else "-"
        rows.append(
            (
                name,
                status(home, attempts),
                step,
                newest_checkpoint(ckpt, deep),
                len(attempts),
                goodput,
                last_metrics(read_metrics(home.store)),
            )
        )
    return table(rows) if len(rows) > 1 else f"no runs under {store_root}"


def cmd_show(home: RunHome, deep: bool) -> str:
    attempts = read_attempts(home.store)
    out = [
        f"run {home.name}: {home.uri}",
        f"status: {status(home, attempts)}",
        f"newest checkpoint: {newest_checkpoint(CheckpointManager(None, home), deep)}",
        f"last metrics: {last_metrics(read_metrics(home.store))}",
        "",
    ]
    if attempts:
        rows = [("attempt", "backend", "job", "hosts", "ranks", "started", "restored", "reached", "committed", "end")]
        for a in attempts:
            rows.append(
                (
                    a.id,
                    a.backend,
                    a.job_key,
                    ",".join(a.hosts),
                    a.world_size,
                    when(a.started),
                    a.restored_step,
                    a.last_step,
                    "-" if a.last_committed_step is None else a.last_committed_step,
                    a.end_reason or "vanished",
                )
            )
        s = summarize(attempts)
        out += [
            table(rows),
            "",
            f"goodput {100 * s['goodput']:.1f}% of {s['wall']:.0f}s wall; badput: "
            + ", ".join(f"{k} {100 * v:.1f}%" for k, v in s["badput"].items()),
        ]
    return "\n".join(out)


def when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%m-%d %H:%M:%S")


def cmd_checkpoints(home: RunHome, deep: bool) -> str:
    ckpt = CheckpointManager(None, home)
    sizes: dict[int, int] = {}
    for key in ckpt.store.list(""):
        tag = key.split("/", 1)[0]
        if tag.startswith("step_") and not key.endswith(MANIFEST):
            sizes[int(tag[5:])] = sizes.get(int(tag[5:]), 0) + ckpt.store.size(key)
    committed = set(ckpt.committed_steps())
    rows = [("step", "time", "size MB", "state")]
    for step in sorted(set(sizes) | committed):
        if step in committed:
            problem = ckpt.verify(step, deep=deep)
            state, t = ("complete" if not problem else f"broken: {problem}"), when(ckpt.read_manifest(step)["time"])
        else:
            state, t = "torn (no manifest: never committed)", "-"
        rows.append((step, t, f"{sizes.get(step, 0) / 1e6:.1f}", state))
    return table(rows) if len(rows) > 1 else f"no checkpoints in {ckpt.store.url()}"


def resolve(run: str, store_root: str) -> RunHome:
    if is_remote(run) or os.sep in run:
        return RunHome(run)
    return RunHome(run_uri(store_root, run))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m msca.runs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("command", choices=["ls", "show", "checkpoints"])
    p.add_argument("target", nargs="?", help="ls: a store root; show/checkpoints: a run name or URI")
    p.add_argument("--store", default=os.environ.get("MSCA_STORE_ROOT", "outputs"), help="store root for names")
    p.add_argument("--deep", action="store_true", help="verify checksums (reads every checkpoint byte)")
    a = p.parse_args(argv)
    try:
        if a.command == "ls":
            print(cmd_ls(a.target or a.store, a.deep))
        elif not a.target:
            p.error(f"{a.command} needs a run name or URI")
        else:
            home = resolve(a.target, a.store)
            print(cmd_show(home, a.deep) if a.command == "show" else cmd_checkpoints(home, a.deep))
    except (OSError, LookupError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
