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


class LeaseLost(LeaseHeld):
    """This attempt can no longer prove that it holds the run's lease: it must write nothing more."""


@dataclass
class Holder:
    job_key: str  # identifies a job across its attempts (requeues, retries)
    attempt: str  # this attempt's id
    host: str
    pid: int
    backend: str
    since: float = 0.0
    renewed: float = 0.0
    cluster: str = ""  # its SLURM ClusterName ("" if none): its job id means something only there
    released: str = ""  # set by whoever proved the holder gone (e.g. launch.py on its host): anyone may take it

    def died_here(self) -> bool:
        """True if we can see that the holder is gone, so there is no need to watch its lease for a TTL: it ran
        on this host and its process is gone, or it is a SLURM job that the scheduler no longer lists (neither
        running nor pending a requeue)."""
        if self.job_key.startswith("slurm-") and self.host != socket.gethostname():
            return self.on_our_slurm_cluster() and slurm_job_gone(self.job_key[len("slurm-") :])
        return self.host == socket.gethostname() and self._process() is False

    def on_our_slurm_cluster(self) -> bool:
        """True only if it recorded a SLURM cluster and it is ours: another cluster sharing the bucket reuses job
        ids, and its squeue would call a live job there "Invalid job id" here."""
        from msca.runtime.host import slurm_cluster_name

        return bool(self.cluster) and self.cluster == slurm_cluster_name()

    def alive_here(self) -> bool:
        """True if the holder ran on this host and its process is still there: live, no need to watch."""
        return self.host == socket.gethostname() and self._process() is True

    def _process(self) -> bool | None:
        """Whether a process with the holder's pid exists on this host (None: not ours to ask)."""
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # another user's process: something runs there, do not take it over

    def renewed_ago(self) -> str:
        """How long ago it says it renewed, by its own clock against ours: shown to people, never acted on."""
        return f"renewed {time.time() - self.renewed:.0f}s ago per its own clock"

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


def read_lease(store: Store) -> tuple[Holder | None, str | None]:
    """The lease's holder and version; (None, None) if there is none, (None, version) if it is unreadable."""
    try:
        data, version = store.read_versioned(KEY)
    except FileNotFoundError:
        return None, None
    try:
        return Holder(**json.loads(data)), version
    except (ValueError, TypeError):
        return None, version


def watch(store: Store, version: str, ttl_s: float) -> str:
    """Watch the lease object for up to `ttl_s` on this reader's monotonic clock: "renewed" as soon as it
    changes (its holder is alive), "released" if it is deleted, "silent" if it stayed the same for the whole
    TTL (its holder stopped renewing). Staleness is judged by this reader alone: the holder's timestamps come
    from another machine's clock, and two minutes of skew must not take over a live run."""
    poll_s = max(0.05, min(ttl_s / 12, 5.0))
    deadline = time.monotonic() + ttl_s
    while time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        _, now = read_lease(store)
        if now is None:
            return "released"
        if now != version:
            return "renewed"
    return "silent"


def live_holder(store: Store, ttl_s: float) -> Holder | None:
    """The holder of the run's lease if its job is alive, else None. Alive is proven, never inferred from its
    timestamp: its process runs on this host, or its lease object changed while we watched it (up to `ttl_s`,
    so a silent lease costs the caller one TTL, said in one log line). A death proven here is recorded in the
    lease (`released`), so the job this caller starts on another machine, which cannot see this host's
    processes, takes the run at once instead of watching it for a TTL."""
    holder, version = read_lease(store)
    if holder is None or holder.released:
        return None
    if holder.died_here():
        record_released(store, holder, version, f"its process is gone (seen from {socket.gethostname()})")
        return None
    if holder.alive_here():
        return holder
    log.warning(
        "run %s has a lease held by %s; watching it for up to %.0fs to see whether it is renewed",
        store.url(),
        holder.describe(),
        ttl_s,
    )
    seen = watch(store, version, ttl_s)
    if seen == "silent":
        record_released(store, holder, version, f"its lease did not change for {ttl_s:.0f}s")
    return holder if seen == "renewed" else None


def record_released(store: Store, holder: Holder, version: str, why: str) -> None:
    """Mark the lease at `version` as its holder's proven end (only if it is still that version); best effort:
    without it the next job merely watches the lease for a TTL."""
    holder.released = why
    try:
        if store.write_if_version(KEY, json.dumps(asdict(holder), indent=1).encode(), version):
            log.info("recorded in %s that %s ended: %s", store.url(KEY), holder.describe(), why)
    except Exception as err:  # noqa: BLE001 - the record only saves the next job a TTL
        log.warning("could not record in %s that its holder ended (%s)", store.url(KEY), err)


class Lease:
    def __init__(self, store: Store, holder: Holder, ttl_s: float = 120.0, renew_s: float = 20.0):
        self.store, self.holder = store, holder
        self.ttl_s, self.renew_s = ttl_s, renew_s
        self._version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the renewal thread and a writer asking for proof renew alike
        self._confirmed: float | None = None  # monotonic time at which our newest *confirmed* write was sent
        self.lost = ""  # why the lease was lost (another job took it over after our renewals stopped)

    # ------------------------------------------------------------------------------------------- reading
    def current(self) -> tuple[Holder | None, str | None]:
        return read_lease(self.store)

    def _payload(self, now: float) -> bytes:
        self.holder.renewed = now
        return json.dumps(asdict(self.holder), indent=1).encode()

    # ------------------------------------------------------------------------------------------- taking
    def acquire(self) -> None:
        """Take the lease or raise LeaseHeld naming its live holder. A lease held by another job is taken over
        only when that job is provably gone: its process is gone from this host, SLURM no longer lists it, or
        its lease object did not change for a whole TTL while we watched (one log line says we wait)."""
        self.store.check_conditional_writes()  # a store that ignores them would let two jobs both take it
        for _ in range(5):  # a few rounds: a contender may change it between our read and our write
            if self._write(None):
                return
            other, version = self.current()
            if version is None:
                continue  # released between the two calls
            why = self._why_take_over(other, version)
            if not why:
                continue  # released while we watched
            log.warning("taking over the run's lease from %s", why)
            if self._write(version):
                return
        raise LeaseHeld(f"could not take the lease {self.store.url(KEY)}: it keeps changing (another launch?)")

    def _write(self, version: str | None) -> bool:
        """Create the lease (version None) or swap it for ours if it is still at `version`."""
        sent, now = time.monotonic(), time.time()
        self.holder.since = now
        data = self._payload(now)
        ok = (
            self.store.write_if_absent(KEY, data)
            if version is None
            else self.store.write_if_version(KEY, data, version)
        )
        if ok:
            self._version = self.store.read_versioned(KEY)[1]
            self._confirmed = sent
        return ok

    def _why_take_over(self, other: Holder | None, version: str) -> str:
        """Why the lease at `version` may be taken over ("" if it was released meanwhile); LeaseHeld if its
        holder is alive."""
        if other is None:
            return "an unreadable lease"
        if other.job_key == self.holder.job_key:
            return "a previous attempt of this job"
        if other.released:
            return f"{other.describe()}, recorded as ended: {other.released}"
        if other.died_here():
            return f"{other.describe()}, whose process is gone"
        if not other.alive_here():
            log.warning(
                "run %s is held by %s; watching its lease for up to %.0fs to see whether it is renewed",
                self.store.url(),
                other.describe(),
                self.ttl_s,
            )
            seen = watch(self.store, version, self.ttl_s)
            if seen == "released":
                return ""
            if seen == "silent":
                return f"{other.describe()}, whose lease did not change for {self.ttl_s:.0f}s"
        raise LeaseHeld(
            f"run {self.store.url()} is held by {other.describe()}, {other.renewed_ago()}, and it is alive; wait "
            f"for it to finish or stop it (a relaunch of the same run.name then resumes it)"
        )

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

    def renew(self, _adopted: bool = False) -> bool:
        """Extend the lease; False (and `lost` set) if another job has taken it. A refused write whose current
        holder is still this attempt is our own earlier renewal (its reply was lost and the store's retry got
        412, or the read after it failed): we adopt that version instead of concluding we were taken over, and
        renew once more from it, since we cannot tell when that lost write landed."""
        with self._lock:
            if self.lost:
                return False
            sent = time.monotonic()
            if self.store.write_if_version(KEY, self._payload(time.time()), self._version):
                self._version = self.store.read_versioned(KEY)[1]
                self._confirmed = sent
                return True
            other, version = self.current()
            if other is None or not self._is_us(other):
                self.lost = f"the run's lease was taken over by {other.describe() if other else 'another job'}"
                log.error("%s: this job must stop writing", self.lost)
                return False
            self._version = version
        return _adopted or self.renew(_adopted=True)

    # ------------------------------------------------------------------------------------------- fencing
    def holds(self) -> bool:
        """Whether this attempt can *prove* it still holds the lease, by its own monotonic clock alone: a
        contender takes it over only after watching it unchanged for a whole TTL from when it first saw our
        newest write, which we sent at `_confirmed`. A quarter of the TTL is left for the write that follows."""
        return not self.lost and self._confirmed is not None and time.monotonic() - self._confirmed < 0.75 * self.ttl_s

    def prove(self) -> bool:
        """holds(), after one renewal of our own when the proof has run out (a slow or failing renewal thread
        is not a lost lease); False once another job took it or the store cannot be written."""
        if self.holds():
            return True
        if not self.lost:
            try:
                self.renew()
            except Exception as err:  # noqa: BLE001 - the store cannot confirm it: no proof, said by the caller
                log.warning("could not renew the run's lease (%s)", err)
        return self.holds()

    def fence(self, doing: str) -> None:
        """Raise LeaseLost unless this attempt can prove it still holds the lease: every write to the run home
        asks first, so a job whose lease lapsed (a long pause, a partition) never overwrites its successor."""
        if not self.prove():
            raise LeaseLost(self.why_not(doing))

    def why_not(self, doing: str) -> str:
        if self.lost:
            cause = self.lost
        elif self._confirmed is None:
            cause = "this attempt never held the run's lease"
        else:
            cause = (
                f"this attempt last confirmed the run's lease {time.monotonic() - self._confirmed:.0f}s ago "
                f"(TTL {self.ttl_s:.0f}s) and cannot renew it now"
            )
        return (
            f"{cause}; {doing} stopped without writing to {self.store.url()} "
            f"(relaunch to resume from the newest commit)"
        )

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
