"""`python -m msca.bench NAME [flags]` runs msca.bench.NAME.main(flags); modules load lazily, so one
benchmark's imports (or absence) never affect another."""

import importlib
import sys

COMMANDS = ("model", "data", "s3clients", "train", "seeds", "readme", "checkpoint", "preempt", "launch")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(
            f"usage: python -m msca.bench {{{','.join(COMMANDS)}}} [flags]  (NAME --help for its flags)",
            file=sys.stderr,
        )
        return 2
    return importlib.import_module(f"msca.bench.{argv[0]}").main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
