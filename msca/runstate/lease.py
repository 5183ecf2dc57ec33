"""One writer per run: a lease object in the run home, taken and renewed with the store's conditional writes.

A job's rank 0 takes `lease.json` before it writes anything and renews it every `renew_s` from a background
thread. Another launch of the same run finds a fresh lease and is refused, naming the holder; a lease whose
holder stopped renewing for `ttl_s` (a crashed or vanished job) is taken over. A requeued or retried attempt of
the *same* job (same `job_key`: the SLURM job id, the Ray run, the local launch) takes its own lease over at
once instead of waiting for it to expire. Every update is a compare-and-swap on the version read before it, so
two contenders can never both believe they hold it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass

from msca.storage import Store

log = logging.getLogger(__name__)

KEY = "lease.json"


class LeaseHeld(RuntimeError):
    """Another live job holds the run."""


@dataclass
class Holder:
    job_key: str  # identifies a job across its attempts (requeues, retries)
    attempt: str  # this attempt's id
    host: str
    pid: int
    backend: str
    since: float = 0.0
    renewed: float = 0.0

    def died_here(self) -> bool:
        """True if we can see that the holder is gone, so there is no need to wait for its lease to expire:
        it ran on this host and its process is gone, or it is a SLURM job that the scheduler no longer lists
        (neither running nor pending a requeue)."""
        if self.job_key.startswith("slurm-") and self.host != socket.gethostname():
            return slurm_job_gone(self.job_key[len("slurm-") :])
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
            return False
        except ProcessLookupError:
            return True
        except PermissionError:
            return False

    def describe(self) -> str:
        return (
            f"{self.backend} job {self.job_key} (attempt {self.attempt}, pid {self.pid} on {self.host}) since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.since))}"
        )


def slurm_job_gone(job_id: str) -> bool:
    """True if `squeue` answers and does not list the job (False when we cannot ask)."""
    from msca.runtime.host import squeue

    out = squeue(job_id, timeout_s=10)
    if out is None:
        return False
    if out.returncode and "Invalid job id" in out.stderr:  # purged from the controller: certainly gone
        return True
    return out.returncode == 0 and not out.stdout.strip()


def live_holder(store: Store, ttl_s: float) -> Holder | None:
    """The holder of the run's lease if it renewed it within `ttl_s` (a job is running), else None."""
    try:
        holder = Holder(**json.loads(store.read_bytes(KEY)))
    except (FileNotFoundError, ValueError, TypeError):
        return None
    return holder if time.time() - holder.renewed < ttl_s and not holder.died_here() else None


class Lease:
    def __init__(self, store: Store, holder: Holder, ttl_s: float = 120.0, renew_s: float = 20.0):
        self.store, self.holder = store, holder
        self.ttl_s, self.renew_s = ttl_s, renew_s
        self._version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = ""  # why the lease was lost (another job took it over after our renewals stopped)

    # ------------------------------------------------------------------------------------------- reading
    def current(self) -> tuple[Holder | None, str | None]:
        try:
            data, version = self.store.read_versioned(KEY)
        except FileNotFoundError:
            return None, None
        try:
            return Holder(**json.loads(data)), version
        except (ValueError, TypeError):
            return None, version  # unreadable: treat as expired

    def _payload(self, now: float) -> bytes:
        self.holder.renewed = now
        return json.dumps(asdict(self.holder), indent=1).encode()

    # ------------------------------------------------------------------------------------------- taking
    def acquire(self) -> None:
        """Take the lease or raise LeaseHeld naming its live holder."""
        for _ in range(5):  # a few rounds: a contender may change it between our read and our write
            now = time.time()
            self.holder.since = now
            if self.store.write_if_absent(KEY, self._payload(now)):
                self._version = self.store.read_versioned(KEY)[1]
                return
            other, version = self.current()
            if version is None:
                continue  # released between the two calls
            age = now - other.renewed if other else float("inf")
            if other and other.job_key != self.holder.job_key and age < self.ttl_s and not other.died_here():
                raise LeaseHeld(
                    f"run {self.store.url()} is held by {other.describe()}, renewed {age:.0f}s ago; wait for it "
                    f"to finish or stop it; if it died, relaunch after its lease expires "
                    f"({self.ttl_s - age:.0f}s)"
                )
            if other:
                why = (
                    "a previous attempt of this job"
                    if other.job_key == self.holder.job_key
                    else f"{other.describe()}, whose process is gone"
                    if other.died_here()
                    else f"{other.describe()}, silent for {age:.0f}s"
                )
                log.warning("taking over the run's lease from %s", why)
            if self.store.write_if_version(KEY, self._payload(now), version):
                self._version = self.store.read_versioned(KEY)[1]
                return
        raise LeaseHeld(f"could not take the lease {self.store.url(KEY)}: it keeps changing (another launch?)")

    def start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renew", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                if not self.renew():
                    return
            except Exception as err:  # noqa: BLE001 - a store hiccup: try again at the next interval
                log.warning("lease renewal failed (%s); retrying in %.0fs", err, self.renew_s)

    def renew(self) -> bool:
        """Extend the lease; False (and `lost` set) if another job has taken it. A refused write whose current
        holder is still this attempt is our own earlier renewal (its reply was lost and the store's retry got
        412, or the read after it failed): we adopt that version instead of concluding we were taken over."""
        if self.store.write_if_version(KEY, self._payload(time.time()), self._version):
            self._version = self.store.read_versioned(KEY)[1]
            return True
        other, version = self.current()
        if other is not None and self._is_us(other):
            self._version = version
            return True
        self.lost = f"the run's lease was taken over by {other.describe() if other else 'another job'}"
        log.error("%s: this job must stop writing", self.lost)
        return False

    def _is_us(self, other: Holder) -> bool:
        return (other.job_key, other.attempt) == (self.holder.job_key, self.holder.attempt)

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._version is None or self.lost:
            return
        other, version = self.current()
        if other and other.attempt == self.holder.attempt and version == self._version:
            self.store.delete(KEY)
        self._version = None
