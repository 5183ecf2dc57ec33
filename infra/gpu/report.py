"""The GPU check's report: one table of what ran, how it ended and what it measured, from check.sh's files.

    python infra/gpu/report.py OUT WORK      (OUT: the step logs and benchmark JSON; WORK: steps.tsv, machine.txt)

Prints markdown (check.sh tees it into OUT/report.md; the README's GPU section is pasted from it). Missing
files mean a step failed or timed out: the table says so instead of failing itself.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

STEPS = {
    "install": "install wheels",
    "gpu_tests": "pytest -m gpu",
    "launch": "python launch.py",
    "bench_train": "bench train (B/16)",
    "bench_data": "bench data",
}
TARGET_OVERHEAD, TARGET_MFU = 1.05, 0.40  # issue 20: MSCA-B/16 step <= 1.05x ViT-B/16, MFU >= 40 % on an H100


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def last_line(text: str, *starts: str) -> str:
    """The last line of a log that starts with one of `starts` (after stripping), or ''."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(starts)]
    return lines[-1] if lines else ""


def step_detail(name: str, out: Path, work: Path) -> str:
    """One line saying what the step produced: the pytest summary, the default run's test accuracy, ..."""
    log = read(out / f"{name}.log") or read(work / f"{name}.log")
    if name == "gpu_tests":
        summary = [
            ln.strip("= ")
            for ln in log.splitlines()
            if " in " in ln and any(w in ln for w in ("passed", "failed", "skipped", "error"))
        ]
        skips = {ln.split(": ", 1)[-1] for ln in log.splitlines() if ln.startswith("SKIPPED")}
        return "; ".join(filter(None, [summary[-1] if summary else "", *sorted(skips)]))
    if name == "launch":
        return last_line(log, "test top-1") or last_line(log, "local:", "error")
    if name == "bench_data":
        return last_line(log, "data:")
    if name == "bench_train" and (out / "bench_train.json").exists():
        return f"{len(json.loads((out / 'bench_train.json').read_text()))} models: the table below"
    tail = [ln for ln in log.splitlines() if ln.strip()]
    return tail[-1][:160] if tail else ""


def steps_table(out: Path, work: Path) -> list[str]:
    rows = ["| step | result | seconds (limit) | detail |", "|---|---|---|---|"]
    for line in read(work / "steps.tsv").splitlines():
        name, rc, secs, limit = line.split("\t")
        result = "ok" if rc == "0" else ("timed out" if rc in ("124", "137") else f"failed ({rc})")
        detail = step_detail(name, out, work).replace("|", "/")
        rows.append(f"| {STEPS.get(name, name)} | {result} | {secs} ({limit}) | {detail} |")
    return rows


def pipeline_rates(out: Path) -> dict:
    """msca's local pipeline: clips/s on one pinned core (workers 0) and with the most workers measured."""
    path = out / "bench_data.json"
    if not path.exists():
        return {}
    rows = [r for r in json.loads(path.read_text()) if r["pipeline"] == "msca local"]
    one = next((r["clips_per_s"] for r in rows if r["workers"] == 0), None)
    most = max(rows, key=lambda r: r["workers"], default=None)
    return {
        "one_core": one,
        "workers": most["workers"] if most else None,
        "all": most["clips_per_s"] if most and most["workers"] else None,
    }


def cores_needed(clips_s: float, rates: dict) -> str:
    """Cores whose loader workers keep up with `clips_s`, at the all-worker rate per worker (else one core's)."""
    per_core = rates["all"] / rates["workers"] if rates.get("all") else rates.get("one_core")
    return f"{math.ceil(clips_s / per_core)}" if per_core else "-"


def model_table(out: Path) -> list[str]:
    path = out / "bench_train.json"
    if not path.exists():
        return ["(no bench train results: see bench_train.log)"]
    results, rates = json.loads(path.read_text()), pipeline_rates(out)
    first = results[0]
    rows = [
        f"{first['batch']} clips x {first['frames']} frames @ {first['crop']}px, {first['precision']} "
        f"ZeRO-{first['zero']}, {first['workers']} loader workers, measured peak "
        f"{first['peak_flops'] / 1e12:.1f} TFLOP/s",
        "",
        "| model | clips/s model | clips/s e2e | step vs first | TFLOP/s | MFU | MFU e2e | peak GiB "
        "| data wait | cores to feed it |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows += [model_row(r, first, rates) for r in results]
    if rates:
        rows += [
            "",
            f"data pipeline (msca local, 8x224 clips): {rates['one_core'] or 0:.1f} clips/s on one core, "
            f"{rates['all'] or 0:.1f} clips/s with {rates['workers']} workers; 'cores to feed it' = the model's "
            "clips/s over the per-worker rate",
        ]
    rows += targets(results)
    return rows


def model_row(r: dict, first: dict, rates: dict) -> str:
    s, mem = r["s_per_step"], r["peak_mem_bytes"]
    cells = [
        r["model"],
        f"{r['batch'] / s['model']:.1f}",
        f"{r['batch'] / s['e2e']:.1f}",
        f"{s['model'] / first['s_per_step']['model']:.3f}",
        f"{r['tflops']:.2f}",
        f"{100 * r['mfu']:.1f}%",
        f"{100 * r['mfu_e2e']:.1f}%",
        f"{mem / 2**30:.1f}" if mem is not None else "-",
        f"{100 * r['data_wait_share']:.1f}%",
        cores_needed(r["batch"] / s["model"], rates),
    ]
    return "| " + " | ".join(cells) + " |"


def targets(results: list[dict]) -> list[str]:
    by = {r["model"]: r for r in results}
    if "msca_b16" not in by or "vit_b16" not in by:
        return []
    ratio = by["msca_b16"]["s_per_step"]["model"] / by["vit_b16"]["s_per_step"]["model"]
    mfu = by["msca_b16"]["mfu"]
    return [
        "",
        f"targets: MSCA-B/16 step {ratio:.3f}x ViT-B/16 (<= {TARGET_OVERHEAD}: "
        f"{'met' if ratio <= TARGET_OVERHEAD else 'NOT met'}); MSCA-B/16 MFU {100 * mfu:.1f}% "
        f"(>= {100 * TARGET_MFU:.0f}%: {'met' if mfu >= TARGET_MFU else 'NOT met'})",
    ]


def main(argv: list[str]) -> int:
    out, work = Path(argv[0]), Path(argv[1])
    machine = read(work / "machine.txt").strip().splitlines()
    print("## GPU check\n")
    print("\n".join(f"    {ln}" for ln in machine) + "\n")
    print("\n".join(steps_table(out, work)) + "\n")
    print("\n".join(model_table(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
