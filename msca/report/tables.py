"""Compare finished runs: `python -m msca.report RUN_URI...` prints their test results side by side."""

from __future__ import annotations

import json
import sys

from msca.runstate.home import RunHome


def load_results(home: RunHome) -> dict | None:
    if not home.store.exists("results.json"):
        return None
    return json.loads(home.store.read_text("results.json"))


def comparison_table(homes: list[RunHome]) -> str:
    rows = [("model", "top-1 %", "top-5 %", "mean class %", "videos", "views", "run")]
    for home in homes:
        res = load_results(home)
        if res is None:
            rows.append(("?", "-", "-", "-", "-", "-", f"{home.name} (no results.json)"))
            continue
        rows.append(
            (
                res["model"],
                f"{100 * res['top1']:.1f}",
                f"{100 * res['top5']:.1f}",
                f"{100 * res['mean_class_accuracy']:.1f}",
                str(res["num_videos"]),
                res["views"],
                home.name,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    uris = sys.argv[1:] if argv is None else argv
    print(comparison_table([RunHome(u) for u in uris]))


if __name__ == "__main__":
    main()
