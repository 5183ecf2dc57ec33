"""The one interface every backend implements, and what a submission carries in and out.

A backend starts a job's ranks somewhere. The launcher asks it, in order: does launch.py itself run on the
cluster (`launches_remotely`: then `submit_launch` hands everything over); are the config's paths usable from
where the ranks start (`check_paths`); do the ranks run on this machine's devices (`ranks_run_here`: then the
launcher checks the precision here); what exactly it would do (`dry_run`, printed and nothing else); the
scheduler's objections before anything is written (`check`); then `submit`, which waits for the job (and
follows it) when the backend's config says so.
"""

from __future__ import annotations

import abc
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional, TypeVar

STOP_GRACE_S = 300.0  # how long a stop request may take: the ranks commit a checkpoint at the next step


@dataclass
class JobSpec:
    job: str  # train | evaluate (a key of jobs.JOBS)
    run_uri: str
    endpoint_url: Optional[str] = None
    log_dir: str = ""  # local folder for per-rank logs
    make_callable: Optional[Callable] = field(default=None, repr=False)  # jobs.JOBS[job], for pickling backends


@dataclass
class Handle:
    backend: str
    description: str  # how to follow it (PIDs, job id, ...)
    returncode: Optional[int] = None  # set when the backend waited for the job
    follow: Optional[str] = None  # how to follow / stop it, when the backend returned at once
    error: Optional[str] = None  # a failed job: the first failing rank's error, located (msca.runtime.failure)


class Backend(abc.ABC):
    name: ClassVar[str]

    def launches_remotely(self, cluster) -> bool:
        """launch.py itself runs on the cluster (where its paths resolve), not here."""
        return False

    def submit_launch(self, cfg, overrides: list[str]) -> int:
        raise NotImplementedError(f"cluster={self.name} runs launch.py here")

    def dry_run_launch(self, cfg, overrides: list[str]) -> str:
        raise NotImplementedError(f"cluster={self.name} runs launch.py here")

    def check_paths(self, cfg) -> None:
        """Before relative paths are taken as relative to here: refuse paths the ranks cannot see."""

    @abc.abstractmethod
    def ranks_run_here(self, cluster) -> bool:
        """The ranks use this machine's devices (so the launcher can check what they can compute)."""

    @abc.abstractmethod
    def dry_run(self, spec: JobSpec, cluster) -> str:
        """What `submit` would start, exactly (commands, script, placement); writes and submits nothing."""

    def check(self, spec: JobSpec, cluster) -> None:
        """The scheduler's objections, before the run home is written (raise ValueError with one line)."""

    @abc.abstractmethod
    def submit(self, spec: JobSpec, cluster) -> Handle:
        """Start the ranks; when the config says to wait, follow the job and return its exit code."""


T = TypeVar("T")


def stop_gracefully(
    wait_until: Callable[[Optional[float]], T],
    request_stop: Callable[[int], None],
    who: str,
    second: str,
    grace_s: float = STOP_GRACE_S,
) -> T:
    """Ctrl-C (or SIGTERM turned into KeyboardInterrupt) means "stop with a checkpoint": ask `who` to stop,
    then wait up to `grace_s` for them. `wait_until(None)` waits for the job; `wait_until(deadline)` gives up
    at the deadline its own way (kill the ranks, abandon the run). A second Ctrl-C propagates: `second` says
    what it does."""
    try:
        return wait_until(None)
    except KeyboardInterrupt as stop:
        print(
            f"stopping: {who} save a checkpoint first (up to {grace_s:.0f}s; Ctrl-C again to {second})",
            file=sys.stderr,
            flush=True,
        )
        request_stop(int(getattr(stop, "signum", signal.SIGINT)))
        return wait_until(time.time() + grace_s)
