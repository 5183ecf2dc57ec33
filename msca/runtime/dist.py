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


class RendezvousError(RuntimeError):
    """The scheduler's variables are missing or contradict each other: never guess a world size."""


TORCH_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'node[1-2]' -> 'node1', 'gpu[007,009-010],cpu1' -> 'gpu007'."""
    head = nodelist.strip().split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist.strip()
    if "[" not in head:
        return head
    prefix, rest = head.split("[", 1)
    return prefix + rest.split("]")[0].split(",")[0].split("-")[0]


def slurm_port(job_id: str) -> int:
    """Every task of a job derives the same port, and a requeued job (same id) gets it again."""
    return 20000 + int(job_id) % 20000


def process_env(environ=None) -> dict:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT for this process.

    From SLURM's variables under srun, else from torchrun/our local backend (RANK...), else a lone process
    (no scheduler at all). Missing or inconsistent variables raise RendezvousError: a rank that guesses
    world size 1 would train alone and write into a shared run home."""
    env = os.environ if environ is None else environ
    if "SLURM_PROCID" in env and "SLURM_JOB_ID" in env and "SLURM_STEP_ID" in env:
        missing = [k for k in ("SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST") if not env.get(k)]
        if missing:
            raise RendezvousError(f"SLURM task without {', '.join(missing)}: cannot place this rank")
        rank, world, local = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env["SLURM_LOCALID"])
        job_id = env.get("SLURM_ARRAY_JOB_ID") or env["SLURM_JOB_ID"]
        out = dict(
            RANK=rank,
            WORLD_SIZE=world,
            LOCAL_RANK=local,
            LOCAL_WORLD_SIZE=int(env.get("SLURM_NTASKS_PER_NODE", "0").split("(")[0] or 0) or None,
            MASTER_ADDR=first_host(env["SLURM_JOB_NODELIST"]),
            MASTER_PORT=slurm_port(job_id),
        )
        for key in ("RANK", "WORLD_SIZE"):  # set by hand or inherited from a launcher: must agree
            if key in env and int(env[key]) != out[key]:
                raise RendezvousError(
                    f"{key}={env[key]} contradicts SLURM's {out[key]} (unset it in the job's "
                    "environment, or run one task per rank under srun)"
                )
    elif "RANK" in env or "WORLD_SIZE" in env:
        missing = [k for k in TORCH_KEYS if not env.get(k)]
        if missing:
            raise RendezvousError(f"RANK/WORLD_SIZE set but {', '.join(missing)} missing")
        out = dict(
            RANK=int(env["RANK"]),
            WORLD_SIZE=int(env["WORLD_SIZE"]),
            LOCAL_RANK=int(env["LOCAL_RANK"]),
            LOCAL_WORLD_SIZE=env.get("LOCAL_WORLD_SIZE"),
            MASTER_ADDR=env["MASTER_ADDR"],
            MASTER_PORT=int(env["MASTER_PORT"]),
        )
    elif int(env.get("SLURM_NTASKS", "1")) > 1:
        raise RendezvousError(
            f"inside SLURM job {env.get('SLURM_JOB_ID')} with {env['SLURM_NTASKS']} tasks but "
            "not in an srun task: start one process per rank with srun"
        )
    else:  # a lone process: tests, notebooks, `python -m jobs` by hand
        out = dict(
            RANK=0,
            WORLD_SIZE=1,
            LOCAL_RANK=0,
            LOCAL_WORLD_SIZE=1,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=int(env.get("MASTER_PORT") or free_port()),
        )
    if not 0 <= out["RANK"] < out["WORLD_SIZE"] or not 0 <= out["LOCAL_RANK"] < out["WORLD_SIZE"]:
        raise RendezvousError(
            f"rank {out['RANK']} / local rank {out['LOCAL_RANK']} outside world size {out['WORLD_SIZE']}"
        )
    return {k: str(v) for k, v in out.items() if v is not None}


def export_process_env() -> dict:
    """Put process_env() into os.environ (what torch.distributed and DeepSpeed read)."""
    env = process_env()
    os.environ.update(env)
    return env


def init_distributed(timeout_s: int | None = None) -> None:
    """Join (or create, for a lone process) the default process group, through DeepSpeed so its comm
    layer and ours share one group. Safe to call when a group already exists (Ray Train makes one).

    The timeout bounds how long a rank waits in a collective for a peer that is gone (default 600 s,
    MSCA_COLLECTIVE_TIMEOUT_S); under SLURM --kill-on-bad-exit usually ends such a job much sooner."""
    disable_deepspeed_shm_build()  # also when the group exists: DeepSpeed would build it at initialize()
    if dist.is_available() and dist.is_initialized():
        return
    export_process_env()
    if timeout_s is None:
        timeout_s = int(os.environ.get("MSCA_COLLECTIVE_TIMEOUT_S", "600"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_device(int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()))
    import deepspeed

    deepspeed.init_distributed(
        dist_backend=backend_name(),
        auto_mpi_discovery=False,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def shutdown() -> None:
    """Destroy every process group before the process exits, DeepSpeed's references to them first.

    `destroy_process_group` only unregisters the groups: gloo's threads (pt_gloo_runloop, gloo_tcp_loop) and
    rank 0's TCPStore server live until the last reference to a group goes, and DeepSpeed keeps some in module
    globals (its world group) and in every engine (call `engine.destroy()` and drop the engine first). Left
    alone they are torn down by the interpreter's own finalisation, in no particular order."""
    import gc

    try:
        import deepspeed.comm.comm as ds_comm
        from deepspeed.utils import groups

        groups._WORLD_GROUP = None
        if ds_comm.cdb is not None:
            ds_comm.cdb.world_group = None
            ds_comm.cdb.process_groups = []
    except (ImportError, AttributeError):  # another DeepSpeed layout: its groups die with the process
        pass
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort on the way out; the process ends next
            pass
    gc.collect()


def local_device(local_rank: int, visible: int) -> int:
    """The GPU of this rank: its local rank when the task sees all of the node's GPUs (--gpus-per-node), or the
    only one it sees when the scheduler binds one GPU per task (--gpus-per-task=1, CUDA_VISIBLE_DEVICES=<one>)."""
    if visible == 1:
        return 0
    if local_rank >= visible:
        raise RendezvousError(
            f"local rank {local_rank} but only {visible} visible GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}): one task per GPU"
        )
    return local_rank


def disable_deepspeed_shm_build() -> None:
    """On CPU DeepSpeed JIT-compiles a shared-memory comm op (45-90 s of g++) on first use; gloo does
    the same job, so skip it."""
    if torch.cuda.is_available():
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


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


def union(mask: torch.Tensor) -> torch.Tensor:
    """Element-wise OR over ranks of a uint8 0/1 mask (one MAX all-reduce; on the device nccl needs)."""
    t = mask.to(device=device(), dtype=torch.uint8, copy=True)
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu()


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


def is_console(handler: logging.Handler) -> bool:
    """A host's handler that already prints to this process's stdout/stderr (Ray's PlainRayHandler does)."""
    if isinstance(handler, logging.FileHandler) or not isinstance(handler, logging.StreamHandler):
        return False
    return type(handler).__name__ == "PlainRayHandler" or handler.stream in (
        sys.stdout,
        sys.stderr,
        sys.__stdout__,
        sys.__stderr__,
    )


def setup_logging(level: int = logging.INFO) -> None:
    """Rank 0 logs at `level`; other ranks only warnings, prefixed with their rank.

    Adds to the host's handlers, never replaces them (Ray Train's worker logging, pytest's capture): our console
    handler goes in only when the host has none of its own (else every line would print twice), and a second
    call (a Ray worker-group restart in the same process) replaces only our previous one."""
    r = int(os.environ.get("RANK", "0"))
    fmt = "%(asctime)s %(levelname)s " + (f"[rank{r}] " if r else "") + "%(name)s: %(message)s"
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_msca", False)]
    if not any(is_console(h) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
        handler._msca = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level if r == 0 else logging.WARNING)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "botocore", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
