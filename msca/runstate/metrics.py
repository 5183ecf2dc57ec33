"""Rank-0 metrics: one JSON line per record in the run home (`metrics.jsonl`) plus TensorBoard scalars.

JSON lines are the durable record (plots and comparisons read them); TensorBoard is for watching. The store's
copy is the history: an attempt (perhaps on another machine with an empty cache) starts from it, keeps the
records up to the step it resumed from and drops the rest (they are recomputed), so every step appears exactly
once however often the run was interrupted. TensorBoard gets the same cut through `purge_step`. A line that is
not a whole record (power loss mid-append) is skipped with a warning, and the rewrite leaves the file clean.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from msca.storage import Store

log = logging.getLogger(__name__)

FILE = "metrics.jsonl"


def parse_metrics(text: str, where: str = FILE) -> list[dict]:
    """The records of a metrics.jsonl; a torn line (a write cut by power loss) is skipped with a warning
    rather than failing every relaunch until someone edits the file by hand."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        record = _record(line)
        if record is None:
            log.warning("%s line %d is not a whole record (a torn write?); skipping it: %.80s", where, number, line)
        else:
            records.append(record)
    return records


def _record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    ok = isinstance(record, dict) and isinstance(record.get("step"), int) and isinstance(record.get("kind"), str)
    return record if ok else None


def read_metrics(store: Store) -> list[dict]:
    """The run's metric history from its store."""
    return parse_metrics(store.read_text(FILE), store.url(FILE)) if store.exists(FILE) else []


def history_until(store: Store, step: int, redone: tuple = ()) -> list[dict]:
    """The store's records up to and including `step` (those after it belong to work that was lost), less the
    `redone` kinds at `step` itself: records the resumed run logs again there (validation after a checkpoint
    at an epoch's last step), so they appear once."""
    return [r for r in read_metrics(store) if r["step"] < step or (r["step"] == step and r["kind"] not in redone)]


class MetricsLogger:
    def __init__(
        self,
        local_dir: Path,
        store: Store,
        resume_step: int = 0,
        enabled: bool = True,
        tensorboard: bool = True,
        redone: tuple = (),
        may_write=None,
    ):
        """Appends to `local_dir/metrics.jsonl` after writing the store's history up to `resume_step` there
        (for a local store the two are the same file), without the `redone` kinds at `resume_step`."""
        self.enabled = enabled
        self.may_write = may_write or (lambda: True)  # False: a fenced writer (lease lapsed) drops its records
        self.path = Path(local_dir) / FILE
        self.writer = None
        if not enabled:
            return
        kept = history_until(store, resume_step, redone)
        text = "".join(json.dumps(r) + "\n" for r in kept)
        tmp = self.path.with_name(f".{FILE}.tmp")
        tmp.write_text(text)
        tmp.replace(self.path)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional at run time
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(
                    log_dir=str(Path(local_dir) / "tb"),
                    flush_secs=30,
                    purge_step=resume_step + 1 if resume_step else None,
                )

    def log(self, kind: str, step: int, **values) -> None:
        if not self.enabled or not self.may_write():
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
