"""Backends: how a job's ranks get started. One interface (`base.Backend`: check, dry run, submit and follow)
and a registry from name to backend: `local` processes, `slurm` (submitit), `ray` (Ray Train; with a Jobs API
address, `ray_jobs` submits launch.py itself). The only importers of submitit and ray."""

from __future__ import annotations

import importlib

from msca.cluster.base import Backend, Handle, JobSpec

REGISTRY = {
    "local": "msca.cluster.local:LocalBackend",
    "slurm": "msca.cluster.slurm:SlurmBackend",
    "ray": "msca.cluster.ray:RayBackend",
}

__all__ = ["Backend", "Handle", "JobSpec", "REGISTRY", "get_backend"]


def get_backend(name: str) -> Backend:
    """The backend registered as `name` (imported only when chosen: submitit and ray stay unloaded)."""
    if name not in REGISTRY:
        raise ValueError(f"cluster.backend={name!r} is not one of {list(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)()
