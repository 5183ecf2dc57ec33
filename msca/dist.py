"""Rank helpers: one way to initialise torch.distributed under every backend, and rank-0 logging.

Backends (local processes, submitit/srun, Ray Train) differ only in how they export RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; once those are set, every job initialises the same way.
"""
from __future__ import annotations

import datetime
import logging
import os
import socket
import sys

import torch
import torch.distributed as dist

log = logging.getLogger("msca")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_name() -> str:
    """nccl when this rank has a GPU, gloo otherwise (CPU runs, tests)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(timeout_s: int = 1800) -> None:
    """Join (or create, for a lone process) the default process group, through DeepSpeed so its comm
    layer and ours share one group. Safe to call when a group already exists (Ray Train makes one)."""
    if dist.is_available() and dist.is_initialized():
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    disable_deepspeed_shm_build()
    import deepspeed

    deepspeed.init_distributed(
        dist_backend=backend_name(),
        auto_mpi_discovery=False,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def disable_deepspeed_shm_build() -> None:
    """On CPU DeepSpeed JIT-compiles a shared-memory comm op (45-90 s of g++) on first use; gloo does
    the same job, so skip it."""
    if torch.cuda.is_available():
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_mean(values: list[float]) -> list[float]:
    """Mean over ranks of a few scalars, in one collective."""
    t = torch.tensor(values, dtype=torch.float64, device=device())
    if world_size() > 1:
        dist.all_reduce(t)
        t /= world_size()
    return t.tolist()


def all_reduce_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device())
    if world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def all_gather_object(obj):
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def setup_logging(level: int = logging.INFO) -> None:
    """Rank 0 logs at `level`; other ranks only warnings, prefixed with their rank."""
    r = int(os.environ.get("RANK", "0"))
    fmt = "%(asctime)s %(levelname)s " + (f"[rank{r}] " if r else "") + "%(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if r == 0 else logging.WARNING)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "botocore", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
