"""The `cluster` section's schema, one per backend: a key of another backend is an error at compose time that
names the backend which has it (`cluster=local cluster.num_workers=3` must not run one rank silently). Each
field's bounds or choices sit next to it (`msca.rules`); `configs/cluster/<backend>.yaml` fills them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from msca.rules import at_least, check, one_of, ruled, within


@dataclass
class ClusterBase:
    backend: str = "local"
    dry_run: bool = False  # print what would be submitted (commands, sbatch script, Ray placement); write nothing


@dataclass
class LocalCluster(ClusterBase):
    """N rank processes on this machine."""

    backend: str = "local"
    procs_per_node: int = ruled(0, at_least(0))  # ranks; 0 = one per GPU, or 1 on a CPU-only machine
    master_port: int = ruled(0, within(0, 65535))  # 0 = pick a free port
    foreground: bool = True  # wait for the job and show its progress


@dataclass
class SlurmCluster(ClusterBase):
    """submitit -> sbatch/srun; keys read like sbatch's own options."""

    backend: str = "slurm"
    nodes: int = ruled(1, at_least(1))
    tasks_per_node: int = ruled(1, at_least(1))  # one rank per task: one per GPU
    gpus_per_node: int = ruled(0, at_least(0))  # > 0: nccl, one task per GPU
    cpus_per_task: int = ruled(8, at_least(1))
    mem_gb: Optional[int] = ruled(None, at_least(1))
    time_min: int = ruled(60 * 24, at_least(1))
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    signal_delay_s: int = ruled(120, at_least(0))  # USR2 this long before the time limit -> checkpoint, requeue
    max_requeues: int = ruled(100, at_least(0))  # requeues after a stop signal (SLURM_RESTART_COUNT)
    setup: List[str] = field(default_factory=list)  # shell lines before srun: module load, env
    additional: Dict[str, Any] = field(default_factory=dict)  # extra sbatch options, e.g. {gres: "gpu:8"}
    folder: Optional[str] = None  # submitit's folder (must be seen by every node); None: <run home>/slurm
    wait: bool = False  # block and stream progress until the job ends


@dataclass
class RayCluster(ClusterBase):
    """Ray Train's TorchTrainer on a private local Ray or an existing cluster."""

    backend: str = "ray"
    address: str = ""  # "": a private local Ray; "auto" / "host:6379" / "ray://host:10001": join a cluster;
    # "http://head:8265": submit launch.py to the cluster's Ray Jobs API (msca.cluster.ray_jobs)
    num_workers: int = ruled(1, at_least(1))  # ranks (Ray Train workers)
    use_gpu: bool = False  # one GPU per worker, nccl
    cpus_per_worker: float = ruled(1.0, at_least(0))
    resources_per_worker: Dict[str, float] = field(default_factory=dict)  # extra custom resources
    placement_strategy: str = ruled("PACK", one_of("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
    max_failures: int = ruled(3, at_least(-1))  # worker-group restarts after a worker or node loss; -1: forever
    runtime_env: Dict[str, Any] = field(default_factory=dict)  # Ray runtime_env (env_vars, pip, ...)
    # copy this shell's AWS credentials into the job's runtime_env (Ray shows them in its job records): only for
    # a cluster whose nodes have no credentials of their own (role, credentials file)
    forward_credentials: bool = False
    storage_path: Optional[str] = None  # Ray Train's own run state (not checkpoints); None: a temp folder
    wait: bool = True  # false only with a Jobs API address: submit and return


SCHEMAS = {"local": LocalCluster, "slurm": SlurmCluster, "ray": RayCluster}


def keys(backend: str) -> set[str]:
    return {f.name for f in fields(SCHEMAS[backend])}


def owner_of(key: str) -> list[str]:
    """The backends whose schema has `key`."""
    return [name for name in SCHEMAS if key in keys(name)]


def foreign_key_error(backend: str, key: str) -> str | None:
    """One line for `cluster.<key>` given under `cluster=<backend>` when another backend owns the key."""
    owners = owner_of(key)
    if backend not in SCHEMAS or key in keys(backend) or not owners:
        return None
    return (
        f"cluster.{key} is a {' and '.join(f'cluster={o}' for o in owners)} option; cluster={backend} has no "
        f"such key (its keys: {', '.join(sorted(keys(backend) - {'backend'}))})"
    )


def check_values(cluster) -> None:
    """Each field's rule (bounds, choices), the key named."""
    for f in fields(SCHEMAS[cluster.backend]):
        if "rule" in f.metadata:
            check(f"cluster.{f.name}", getattr(cluster, f.name), f.metadata["rule"])
