"""When a job fails, the first failing rank tells the story.

A rank that fails writes `rank<N>.error.json` (time, host, the exception line, the frames that locate it, the
full traceback) into the job's log folder (`MSCA_ERROR_DIR`, set by the backend). The launcher then reports the
*first* failure, not the collateral errors of ranks that lost their peer ("Connection closed by peer").

Expected failures (an unreachable store, bad credentials, a missing bucket, bad data, a held lease, a bad
value) are one line in the rank's log, no traceback: they are the user's to fix, not bugs. Anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import traceback
from pathlib import Path

from msca.runtime.errors import is_user_error

ERROR_DIR_ENV = "MSCA_ERROR_DIR"
FAULT_ENV = "MSCA_FAULT_INJECT"  # fault tests: "<what>@<rank>" (msca.runtime.collective, jobs/__main__)


def pause_point(step: int) -> None:
    """Fault tests: FAULT_ENV="pause@<rank>:<step>" stops this rank's process (a real SIGSTOP, as a long stall
    or a frozen VM would) right after that optimizer step, before any of the step's writes, so a test can let
    its lease lapse, have another job take the run over, and continue it with SIGCONT."""
    spec = os.environ.get(FAULT_ENV, "")
    if spec == f"pause@{os.environ.get('RANK', '0')}:{step}":
        os.kill(os.getpid(), signal.SIGSTOP)


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def locate(err: BaseException, frames: int = 3) -> list[str]:
    """The innermost frames of the project's own code (or the innermost frames at all), as 'file:line in fn'."""
    tb = traceback.extract_tb(err.__traceback__)
    ours = [f for f in tb if "/msca/" in f.filename or "/jobs/" in f.filename] or list(tb)
    return [f"{os.path.relpath(f.filename)}:{f.lineno} in {f.name}" for f in ours[-frames:]]


def record(err: BaseException) -> None:
    """Write this rank's failure into the backend's log folder (no-op without one)."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder:
        return
    rank = os.environ.get("RANK", "0")
    own = own_cause(err)
    entry = {
        "time": time.time(),
        "rank": int(rank),
        "host": socket.gethostname(),
        "error": one_line(own),
        "where": locate(own),
        "expected": is_user_error(own),
        "collateral": is_collateral(own),
        "traceback": "".join(traceback.format_exception(err)),
    }
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"rank{rank}.error.json").write_text(json.dumps(entry, indent=1))
    except OSError:
        pass  # the log folder is gone: the rank's own log still has the error


def own_cause(err: BaseException) -> BaseException:
    """The error this rank hit itself when an agreed section re-raised it as a CollectiveError (chained as its
    cause): that one is this rank's story, not collateral, so the launcher blames this rank and not the one that
    happened to record first."""
    from msca.runtime.collective import CollectiveError

    cause = err.__cause__ if isinstance(err, CollectiveError) else None
    return cause if isinstance(cause, Exception) else err


def is_collateral(err: BaseException) -> bool:
    """Errors a rank gets because *another* rank failed (its peer vanished, or an agreed section re-raised)."""
    from msca.runtime.collective import CollectiveError

    text = str(err).lower()
    return isinstance(err, CollectiveError) or any(
        s in text for s in ("connection closed by peer", "connection reset by peer", "broken pipe", "socket closed")
    )


def record_end(code: int) -> None:
    """Write how this rank's job ended (its exit code) into the backend's log folder, last thing before the
    process exits: the launcher believes this record over an exit status that the process's teardown may
    still spoil (a signal after the run's work was committed)."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder:
        return
    try:
        (Path(folder) / f"rank{os.environ.get('RANK', '0')}.end.json").write_text(json.dumps({"code": code}))
    except OSError:
        pass  # the folder is gone: the exit status stands


def recorded_end(folder: str | Path, rank: int) -> int | None:
    """The exit code rank `rank` recorded for its job in this launch, or None."""
    try:
        return int(json.loads((Path(folder) / f"rank{rank}.end.json").read_text())["code"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear(folder: str | Path) -> None:
    for pattern in ("rank*.error.json", "rank*.end.json"):
        for f in Path(folder).glob(pattern):
            f.unlink(missing_ok=True)


def first_failure(folder: str | Path) -> str | None:
    """'rank N on HOST: Error: message (at file:line in fn)' for the first root-cause failure, else None."""
    entries = []
    for f in Path(folder).glob("rank*.error.json"):
        try:
            entries.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    if not entries:
        return None
    first = min(entries, key=lambda e: (e["collateral"], e["time"]))
    where = f" (at {first['where'][-1]})" if first["where"] and not first["expected"] else ""
    return f"rank {first['rank']} on {first['host']} failed first: {first['error']}{where}"
