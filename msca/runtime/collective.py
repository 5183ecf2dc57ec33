"""Fail-safe collective sections: an error on one rank reaches every rank as the same error.

Without this, a rank that raises inside a section the others finish (rank 0 writing a manifest, say) leaves
them waiting in the next collective until the process-group timeout. `agreed(fn, what)` runs `fn` on every
rank, then gathers one status per rank: if any rank failed, all raise `CollectiveError` naming the first
failing rank and its error (the failing rank also logs its full traceback).
"""

from __future__ import annotations

import logging
import os

from msca.runtime import dist
from msca.runtime.errors import is_user_error
from msca.runtime.failure import FAULT_ENV, one_line

log = logging.getLogger(__name__)

# Fault tests: FAULT_ENV="<section prefix>@<rank>" makes that section raise on that rank (real processes, real
# collectives).


class CollectiveError(RuntimeError):
    """A collective section failed on some rank; raised on every rank."""


def agreed(fn, what: str):
    """Run `fn()` on this rank and agree on the outcome with every rank; returns this rank's result."""
    own = None
    try:
        _inject(what)
        result, error = fn(), None
    except Exception as err:  # noqa: BLE001 - re-raised on every rank below
        _log_own(what, err)
        own, result, error = err, None, f"{type(err).__name__}: {err}"
    errors = dist.all_gather_object(error)
    for rank, err in enumerate(errors):
        if err:  # chained to this rank's own error, so the failure record names the rank that hit it
            raise CollectiveError(f"{what} failed on rank {rank}: {err}") from own
    return result


def _log_own(what: str, err: Exception) -> None:
    """An expected error (a held lease, an unreachable store) is one line; a bug keeps its traceback."""
    if is_user_error(err):
        log.error("%s failed on this rank: %s", what, one_line(err))
    else:
        log.exception("%s failed on this rank", what)


def from_main(fn, what: str):
    """Run `fn()` on rank 0 only and hand its result to every rank (errors reach every rank)."""
    return dist.all_gather_object(agreed(lambda: fn() if dist.is_main() else None, what))[0]


def _inject(what: str) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    prefix, _, rank = spec.rpartition("@")
    if prefix and what.startswith(prefix) and rank.isdigit() and int(rank) == dist.rank():
        raise RuntimeError(f"fault injected by {FAULT_ENV}={spec}")
