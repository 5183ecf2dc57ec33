"""Regenerate README's example outputs from real runs of the current commit (never pasted by hand).

    python -m msca.bench readme [--seeds-json seeds.json]

Runs `python launch.py` (the embedded default) and `python launch.py experiment=motion_compare` on a fresh
synthetic dataset, then rewrites the README blocks between `<!-- BEGIN name -->` / `<!-- END name -->`:
`default-run` (the default run's output, trimmed), `motion-compare` (its table) and, with --seeds-json (from
`python -m msca.bench seeds --json`), `seeds` (the robustness table); with --data-json (from
`python -m msca.bench data --json`), `data` (the data-pipeline table). Each block says the machine and commit.
--no-runs rewrites only the blocks given as JSON (no launches).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from pathlib import Path

from msca.bench.data import report as report_data
from msca.bench.seeds import ROOT, launch, provenance, report

README = ROOT / "README.md"
# Lines of the default run worth showing (the rest is start-up noise and per-epoch checkpoint lines).
KEEP = re.compile(
    r"^(run |local:|test top-1)|synthetic dataset written|msca\.training\.trainer: (model|epoch)|jobs\.evaluate"
)


def trim(output: str, root: str) -> str:
    lines = [
        re.sub(r"^\d\d:\d\d:\d\d ", "", line).replace(root, "...") for line in output.splitlines() if KEEP.search(line)
    ]
    return "\n".join(lines)


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- BEGIN {name} --> ... <!-- END {name} --> block")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m msca.bench readme", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds-json", help="output of `python -m msca.bench seeds --json` to show as a table")
    p.add_argument("--data-json", help="output of `python -m msca.bench data --json` to show as a table")
    p.add_argument("--no-runs", action="store_true", help="skip the launches: only the blocks given as JSON")
    a = p.parse_args(argv)
    text = README.read_text()
    if a.data_json:
        data = json.loads(Path(a.data_json).read_text())
        body = "\n".join([report_data(data["results"]), *data["notes"]])
        made = f"`python -m msca.bench data`, {data['setup']}; {data['provenance']}"
        text = replace_block(text, "data", f"```\n{body}\n```\n({made})")
    if a.no_runs:
        README.write_text(text)
        print("README.md updated from the JSON given")
        return 0
    work = tempfile.mkdtemp(prefix="msca-readme-")
    env = dict(os.environ, MSCA_STORE_ROOT=f"{work}/outputs", MSCA_DATA_ROOT=f"{work}/data")
    where = provenance()
    wall, out = launch(["run.name=default"], env)
    text = replace_block(
        text, "default-run", f"```\n{trim(out, work)}\n```\n({wall:.0f} s wall including data generation; {where})"
    )
    _, out = launch(["experiment=motion_compare", "run.name=compare"], env)
    table = out[out.rindex("\nmodel ") :].strip()  # the comparison table closes the output
    text = replace_block(text, "motion-compare", f"```\n{table}\n```\n({where})")
    if a.seeds_json:
        seeds = json.loads(Path(a.seeds_json).read_text())
        made = seeds.get("provenance", "commit unknown")  # where the seeds ran, not where this README is made
        text = replace_block(text, "seeds", report(seeds) + f"\n\n(`python -m msca.bench seeds`; {made})")
    README.write_text(text)
    print(f"README.md updated ({where})")
    return 0
