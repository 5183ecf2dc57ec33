"""Everything under a run's home, `<store>/runs/<name>/`: the single source of truth for a run's state.

`home` (config.yaml, launch.json, the local cache folder), `lease` (one writer at a time), `attempts` (the
ledger: one record per start of a job, goodput), `session` (rank 0's lease and attempt for one job),
`metrics` (metrics.jsonl, appended through the store), `checkpoint` (the commit protocol: staged, uploaded,
manifest last, retention).
"""

from msca.runstate.attempts import Attempt, AttemptLedger, read_attempts, summarize
from msca.runstate.checkpoint import CheckpointManager
from msca.runstate.home import RunHome, run_uri
from msca.runstate.lease import Holder, Lease, LeaseHeld, live_holder
from msca.runstate.metrics import MetricsLogger, read_metrics
from msca.runstate.session import LEASE_TTL_S, RunSession

__all__ = [
    "Attempt",
    "AttemptLedger",
    "CheckpointManager",
    "Holder",
    "LEASE_TTL_S",
    "Lease",
    "LeaseHeld",
    "MetricsLogger",
    "RunHome",
    "RunSession",
    "live_holder",
    "read_attempts",
    "read_metrics",
    "run_uri",
    "summarize",
]
