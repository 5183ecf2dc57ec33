"""The attempt ledger: every start of a training job leaves one record in the run home, `attempts/<id>.json`.

Rank 0 writes its attempt's record when it starts and rewrites it at the first step, at every committed
checkpoint (a heartbeat) and at the end, so the ledger survives any death: a record without an end is an
attempt that vanished (kill -9, node loss) after its last heartbeat. From the ledger, `summarize` computes the
run's **goodput** (productive step time / wall time) and its badput by cause: start-up, restore, steps
recomputed after a failure (done after the commit the next attempt resumed from), checkpoint stalls, and the
rest (validation, evaluation, data waits outside steps, time lost after the last heartbeat is not counted).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Optional

from msca.storage import Store

PREFIX = "attempts/"
log = logging.getLogger(__name__)


def job_identity() -> tuple[str, str]:
    """(backend, job key): the key is shared by all attempts of one scheduler job (its requeues, retries)."""
    if os.environ.get("MSCA_JOB_KEY"):
        return os.environ.get("MSCA_BACKEND", "local"), os.environ["MSCA_JOB_KEY"]
    if os.environ.get("SLURM_JOB_ID"):
        return "slurm", f"slurm-{os.environ['SLURM_JOB_ID']}"
    return os.environ.get("MSCA_BACKEND", "local"), f"pid-{socket.gethostname()}-{os.getppid()}"


@dataclass
class Attempt:
    id: str
    backend: str
    job_key: str
    hosts: list
    world_size: int
    started: float
    restart_count: int = 0  # SLURM_RESTART_COUNT (requeues of this job)
    restored_step: int = 0  # 0: a fresh start
    restore_s: float = 0.0  # checkpoint lookup, download, verify and load
    first_step_at: Optional[float] = None  # when the training loop began (start-up and restore end)
    last_step: int = 0  # newest optimizer step reached
    total_steps: int = 0  # the run's planned steps (as this attempt computed them)
    step_s: float = 0.0  # wall time inside training steps (data wait included)
    checkpoint_stall_s: float = 0.0  # time the loop waited for saves and commits
    last_committed_step: Optional[int] = None
    heartbeat: float = 0.0
    ended: Optional[float] = None
    end_reason: Optional[str] = None  # finished | stopped | failed (None while running or if it vanished)
    error: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{PREFIX}{self.id}.json"


class AttemptLedger:
    """Rank 0's writer of this attempt's record (nothing is written before the first `write()`)."""

    def __init__(self, store: Store, hosts: list, world_size: int):
        backend, job_key = job_identity()
        now = time.time()
        self.store = store
        self.attempt = Attempt(
            id=time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + "-" + uuid.uuid4().hex[:6],
            backend=backend,
            job_key=job_key,
            hosts=sorted(set(hosts)),
            world_size=world_size,
            started=now,
            restart_count=int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        )
        self._written = False

    def write(self) -> None:
        """Best effort after the first write: a store outage delays the record, it never costs the run (the
        next heartbeat writes it whole)."""
        self.attempt.heartbeat = time.time()
        try:
            self.store.write_text(self.attempt.key, json.dumps(asdict(self.attempt), indent=1))
        except Exception as err:  # noqa: BLE001 - rank 0 alone writes it: any error after the first write waits
            if not self._written:  # for the next heartbeat instead of stranding the other ranks
                raise
            log.warning(
                "attempt record %s not written (%s); it is rewritten at the next heartbeat",
                self.store.url(self.attempt.key),
                err,
            )
        self._written = True

    def restored(self, step: int, seconds: float, total_steps: int = 0) -> None:
        self.attempt.restored_step, self.attempt.restore_s = step, round(seconds, 3)
        self.attempt.total_steps = total_steps
        self.attempt.last_step = step
        self.write()

    def first_step(self) -> None:
        self.attempt.first_step_at = time.time()
        self.write()

    def progress(self, step: int, step_s: float) -> None:
        self.attempt.last_step, self.attempt.step_s = step, round(step_s, 3)

    def committed(self, step: int, stall_s: float) -> None:
        self.attempt.last_committed_step = step
        self.attempt.checkpoint_stall_s = round(stall_s, 3)
        self.write()

    def end(self, reason: str, error: str = "") -> None:
        self.attempt.ended, self.attempt.end_reason, self.attempt.error = time.time(), reason, error[:2000]
        self.write()


def read_attempts(store: Store) -> list[Attempt]:
    out = []
    for key in store.list(PREFIX.rstrip("/")):
        if key.endswith(".json"):
            try:
                out.append(Attempt(**json.loads(store.read_text(key))))
            except (ValueError, TypeError):
                continue  # a record from another version, or torn: ignored
    return sorted(out, key=lambda a: a.started)


def summarize(attempts: list[Attempt]) -> dict:
    """Goodput and badput by cause over a run's attempts (seconds, and fractions of the wall time)."""
    totals = dict(wall=0.0, productive=0.0, startup=0.0, restore=0.0, recomputed=0.0, checkpoint=0.0, other=0.0)
    for i, a in enumerate(attempts):
        end = a.ended or a.heartbeat
        wall = max(0.0, end - a.started)
        steps = max(0, a.last_step - a.restored_step)
        per_step = a.step_s / steps if steps else 0.0
        resumed_at = attempts[i + 1].restored_step if i + 1 < len(attempts) else a.last_step
        redone = max(0, a.last_step - max(resumed_at, a.restored_step)) if i + 1 < len(attempts) else 0
        startup = max(0.0, (a.first_step_at or end) - a.started - a.restore_s)
        parts = dict(
            productive=per_step * (steps - redone),
            recomputed=per_step * redone,
            startup=startup,
            restore=a.restore_s,
            checkpoint=a.checkpoint_stall_s,
        )
        parts["other"] = max(0.0, wall - sum(parts.values()))
        totals["wall"] += wall
        for k, v in parts.items():
            totals[k] += v
    wall = totals["wall"] or 1.0
    out = {k: round(v, 2) for k, v in totals.items()}
    out["goodput"] = round(totals["productive"] / wall, 4)
    out["badput"] = {k: round(totals[k] / wall, 4) for k in ("startup", "restore", "recomputed", "checkpoint", "other")}
    out["attempts"] = len(attempts)
    return out
