"""Backends: how a job's ranks get started. One small interface: `local` processes, `slurm` (submitit) and
`ray` (Ray Train) behind the same `submit`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional


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
    error: Optional[str] = None  # a failed job: the first failing rank's error, located (msca.failure)


def get_backend(name: str):
    if name == "local":
        from msca.cluster.local import LocalBackend

        return LocalBackend()
    if name == "slurm":
        from msca.cluster.slurm import SlurmBackend

        return SlurmBackend()
    if name == "ray":
        from msca.cluster.ray import RayBackend

        return RayBackend()
    raise ValueError(f"cluster.backend={name!r} is not one of 'local', 'slurm', 'ray'")
