"""Ray backend: the job from `jobs.JOBS` on every worker of a Ray Train `TorchTrainer`.

Ray Train makes the process group (gloo, or nccl with GPUs) and DeepSpeed joins it; the job entry does the rest
exactly as under the other backends. Ray's own checkpoint storage is not used: checkpoints go through the run
home's store and commit protocol, so a restarted worker group (worker or node loss, `max_failures`) resumes from
the newest committed step like a SLURM requeue or a local relaunch, and a run can move between backends. With a
Jobs API address (http://HEAD:8265) launch.py submits itself to the cluster instead: msca.cluster.ray_jobs.

Ray retries any worker error; deterministic ones (a config error, an incompatible checkpoint, a node whose
scratch is unusable) would fail the same way on every retry. A worker that hits one records it in Ray's KV store
(the first one wins) and raises, so Ray tears the whole group down at once (a worker that merely returned would
leave its peers waiting in a collective for its timeout); a restarted group finds the record and ends at once,
and the driver reports that worker's cause. Ray Train V2 runs the training function in a thread (no signal handlers):
a stop is asked for through the run's stop key in Ray's KV store, which a watcher thread turns into the job's
stop flag. This module and msca.cluster.ray_jobs are the only importers of ray besides tests.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from typing import Callable

from msca.cluster.base import STOP_GRACE_S, Backend, Handle, JobSpec, stop_gracefully
from msca.cluster.ray_env import forwarded_env_vars, job_runtime_env, masked, user_runtime_env
from msca.runtime.errors import EXIT_FAILED, EXIT_STOPPED, EXIT_USAGE, is_deterministic
from msca.runtime.host import REPO
from msca.runtime.preemption import StopRequested

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ worker side
STOP_NAMESPACE = "msca"


def stop_key(job_key: str) -> bytes:
    return f"stop/{job_key}".encode()


def watch_stop(job_key: str, flag, poll_s: float = 1.0) -> threading.Event:
    """A daemon thread that sets the job's stop flag when the driver asks for a stop (Ctrl-C): the signal
    handler's job, off the main thread. Returns the event that ends the watcher."""
    from ray.experimental import internal_kv

    done = threading.Event()

    def loop():
        while not done.wait(poll_s):
            try:
                value = internal_kv._internal_kv_get(stop_key(job_key), namespace=STOP_NAMESPACE)
            except Exception:  # noqa: BLE001 - the GCS is restarting or gone: the group restarts anyway
                continue
            if value:
                flag.request(int(value))
                return

    threading.Thread(target=loop, name="msca-stop-watch", daemon=True).start()
    return done


def run_worker(make_callable: Callable, run_uri: str, endpoint_url: str | None, job_key: str, threads: int) -> dict:
    """What every Ray Train worker runs (in a thread of its worker actor). Returns the run's outcome; only
    worker loss and unexpected errors raise (those Ray retries)."""
    os.environ.update(MSCA_BACKEND="ray", MSCA_JOB_KEY=job_key, OMP_NUM_THREADS=str(threads))
    from msca.runtime import preemption

    failed = recorded_failure(job_key)
    if failed:  # a group restarted after a deterministic failure: it would fail the same way
        return {"status": "failed", "error": failed}
    watcher = watch_stop(job_key, preemption.install())
    try:
        result = make_callable(run_uri, endpoint_url)()
        return {"status": "finished", "result": result}
    except StopRequested as stop:
        logging.getLogger("jobs").warning("%s", stop)
        return {"status": "stopped", "step": stop.step, "message": str(stop)}
    except Exception as err:
        if not is_deterministic(err):
            raise  # worker-side faults: Ray restarts the group (FailureConfig.max_failures)
        error = f"{worker_name()}: {type(err).__name__}: {' '.join(str(err).split())}"
        logging.getLogger("jobs").error("not retried (a retry would fail the same way): %s", error)
        record_failure(job_key, error)
        raise DeterministicFailure(error) from None  # the whole group goes down now, not at a peer's timeout
    finally:
        watcher.set()


class DeterministicFailure(RuntimeError):
    """Raised by the worker that hit a deterministic error (recorded for the driver): tears the group down."""


def failure_key(job_key: str) -> bytes:
    return f"failed/{job_key}".encode()


def worker_name() -> str:
    """'rank R on HOST' for this Ray Train worker."""
    import socket

    try:
        import ray.train

        rank = ray.train.get_context().get_world_rank()
    except Exception:  # noqa: BLE001 - outside a Ray Train worker (tests)
        rank = os.environ.get("RANK", "?")
    return f"rank {rank} on {socket.gethostname()}"


def record_failure(job_key: str, error: str) -> None:
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_put(failure_key(job_key), error.encode(), overwrite=False, namespace=STOP_NAMESPACE)
    except Exception:  # noqa: BLE001 - the GCS is unreachable: the group still fails (retried, then reported)
        logging.getLogger("jobs").warning("could not record the failure in Ray's KV store")


def recorded_failure(job_key: str) -> str:
    """The deterministic failure a worker of this job recorded ("" if none)."""
    from ray.experimental import internal_kv

    try:
        value = internal_kv._internal_kv_get(failure_key(job_key), namespace=STOP_NAMESPACE)
    except Exception:  # noqa: BLE001 - the cluster is going away
        return ""
    return value.decode() if value else ""


# ------------------------------------------------------------------------------------------------ driver side
def ray_temp_dir() -> str:
    """Ray's session folder; short, because its unix socket paths must fit in 107 bytes."""
    path = os.environ.get("MSCA_RAY_TMPDIR") or os.path.join(tempfile.gettempdir(), "ray")
    if len(path) > 40:
        path = f"/tmp/msca-ray-{os.getuid()}"
    return path


def worker_runtime_env(cluster) -> dict:
    """The user's runtime_env plus what every worker needs: `jobs` and this msca importable.

    On a cluster (any address) this checkout is shipped as the working_dir, as `ray job submit --working-dir`
    does, so nodes need neither a shared filesystem nor an install of msca (a runtime_env.working_dir of the
    user's wins); a private local Ray just gets it on PYTHONPATH. Inside a Jobs API job (msca.cluster.ray_jobs)
    the job's runtime_env already carries all of it, composed by the submitting launch.py, and Ray refuses a
    ray.init runtime_env that repeats any of its keys: only what the job lacks is added."""
    job = job_runtime_env()
    env = user_runtime_env(cluster)
    env_vars = forwarded_env_vars(env.get("env_vars"), cluster.forward_credentials)
    if cluster.address and not job.get("working_dir"):
        env.setdefault("working_dir", str(REPO))
    elif not job.get("working_dir"):
        path = [str(REPO)] + [
            p
            for p in (env_vars.get("PYTHONPATH") or os.environ.get("PYTHONPATH", "")).split(os.pathsep)
            if p and p != str(REPO)
        ]
        env_vars["PYTHONPATH"] = os.pathsep.join(path)
    env = {k: v for k, v in env.items() if k not in job}
    job_vars = job.get("env_vars") or {}
    env["env_vars"] = {k: v for k, v in env_vars.items() if k not in job_vars}
    return env


def connect(cluster) -> None:
    """Join the cluster at cluster.address, or start a private local Ray on 127.0.0.1 when it is empty."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not sys.stdout.isatty():  # worker lines in a log file (a Ray job's, SLURM's, a test's): no colour codes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    kwargs = dict(runtime_env=worker_runtime_env(cluster), log_to_driver=True, logging_level=logging.WARNING)
    if cluster.address:
        ray.init(address=cluster.address, **kwargs)
    else:
        cpus = max(1, int(cluster.num_workers * max(cluster.cpus_per_worker, 1)))
        ray.init(
            num_cpus=cpus,
            num_gpus=cluster.num_workers if cluster.use_gpu else 0,
            include_dashboard=False,
            _temp_dir=ray_temp_dir(),
            _node_ip_address="127.0.0.1",
            **kwargs,
        )


def trainer_for(spec: JobSpec, cluster, job_key: str):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    threads = max(1, int(cluster.cpus_per_worker))
    fn = functools.partial(run_worker, spec.make_callable, spec.run_uri, spec.endpoint_url, job_key, threads)
    resources = {
        "CPU": float(cluster.cpus_per_worker),
        **{k: float(v) for k, v in dict(cluster.resources_per_worker).items()},
    }
    if cluster.use_gpu:
        resources["GPU"] = resources.get("GPU", 1.0)
    storage = cluster.storage_path or os.path.join(tempfile.gettempdir(), "msca-ray-results")
    return TorchTrainer(
        fn,
        torch_config=TorchConfig(
            backend="nccl" if cluster.use_gpu else "gloo",
            timeout_s=int(os.environ.get("MSCA_COLLECTIVE_TIMEOUT_S", "600")),
        ),
        scaling_config=ScalingConfig(
            num_workers=cluster.num_workers,
            use_gpu=cluster.use_gpu,
            resources_per_worker=resources,
            placement_strategy=cluster.placement_strategy,
        ),
        run_config=RunConfig(
            name=job_key, storage_path=storage, failure_config=FailureConfig(max_failures=cluster.max_failures)
        ),
    )


def request_stop(job_key: str, signum: int) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(stop_key(job_key), str(signum).encode(), overwrite=True, namespace=STOP_NAMESPACE)


def clear_stop(job_key: str) -> None:
    """Remove the job's stop request and failure record from Ray's KV store."""
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_del(stop_key(job_key), namespace=STOP_NAMESPACE)
        internal_kv._internal_kv_del(failure_key(job_key), namespace=STOP_NAMESPACE)
    except Exception:  # noqa: BLE001 - the cluster is going away: nothing to clean
        pass


class StopSignal(KeyboardInterrupt):
    """SIGTERM to the driver (`ray job stop`, `kill`): the same stop as Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def raise_stop(signum, _frame):
    raise StopSignal(signum)


def fit(trainer, job_key: str, max_failures: int, stop_grace_s: float = STOP_GRACE_S):
    """trainer.fit() in a thread, so Ctrl-C or SIGTERM here becomes a stop request to the workers (they commit
    a checkpoint at the next step); a second Ctrl-C (or the grace period) abandons the run."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_stop)
    box: dict = {}
    done = threading.Event()  # not Thread.join/is_alive: a KeyboardInterrupt inside join() can leave
    # is_alive() False while the thread still runs (CPython), and the run would be taken for finished

    def run():
        try:
            box.update(_fit(trainer, max_failures))
        finally:
            done.set()

    threading.Thread(target=run, name="ray-fit", daemon=True).start()

    def wait_until(deadline: float | None) -> bool:
        while not done.is_set() and (deadline is None or time.time() < deadline):
            time.sleep(0.2)
        return done.is_set()

    if not stop_gracefully(
        wait_until, lambda signum: request_stop(job_key, signum), "the workers", "abandon", stop_grace_s
    ):
        return None, "the workers did not stop within the grace period"
    return box.get("result"), box.get("error")


def _fit(trainer, max_failures: int) -> dict:
    try:
        return {"result": trainer.fit()}
    except Exception as err:  # noqa: BLE001 - TrainingFailedError and friends: reported, not raised
        return {
            "error": f"{failure_summary(err)}; the {max_failures} worker-group restart(s) of "
            f"cluster.max_failures={max_failures} used up"
        }


_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*")
_DIED = re.compile(r"actor died|health check failed|worker process has died", re.IGNORECASE)


def last_error_line(text: str, limit: int = 200) -> str:
    """A traceback's `ExcType: message` line (the last one), else its last line; shortened."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found = [line for line in lines if _ERROR_LINE.match(line)]
    line = (found or lines or ["(no message)"])[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def failure_summary(err: BaseException) -> str:
    """One line for a failed fit(): per rank, the worker that died (node, pid) or its error's last line, dead
    workers first (the others' errors are usually their collateral: a peer's connection reset). Ray's full
    report, with tracebacks and worker log paths, is in the output above."""
    failures = getattr(err, "worker_failures", None)
    if not failures:
        cause = getattr(err, "controller_failure", err)
        return f"{type(cause).__name__}: {last_error_line(str(cause))}"
    died, errors = [], []
    for rank, failure in sorted(failures.items()):
        text = str(failure)
        if _DIED.search(text):
            host, pid = re.search(r"hostname='([^']+)'", text), re.search(r"\bpid=(\d+)", text)
            died.append(
                f"rank {rank}"
                + (f" on {host.group(1)}" if host else "")
                + (f" (pid {pid.group(1)})" if pid else "")
                + ": its process died (killed, out of memory or crashed)"
            )
        else:
            errors.append(f"rank {rank}: {last_error_line(text)}")
    return "; ".join(died + errors)


class RayBackend(Backend):
    name = "ray"

    def launches_remotely(self, cluster) -> bool:
        """A Jobs API address: launch.py itself runs on the cluster (msca.cluster.ray_jobs)."""
        from msca.cluster.ray_jobs import is_jobs_address

        return is_jobs_address(cluster.address)

    def submit_launch(self, cfg, overrides: list[str]) -> int:
        from msca.cluster.ray_jobs import submit_launch

        return submit_launch(cfg, overrides)

    def dry_run_launch(self, cfg, overrides: list[str]) -> str:
        from msca.cluster.ray_jobs import describe_submission

        return describe_submission(cfg, overrides)

    def ranks_run_here(self, cluster) -> bool:
        return not cluster.address  # a private local Ray uses this machine's devices

    def dry_run(self, spec: JobSpec, cluster) -> str:
        """The trainer Ray would run: workers, resources, placement, failure policy and the workers'
        runtime_env (secrets shown as names only)."""
        resources = {
            "CPU": float(cluster.cpus_per_worker),
            **{k: float(v) for k, v in dict(cluster.resources_per_worker).items()},
        }
        if cluster.use_gpu:
            resources["GPU"] = resources.get("GPU", 1.0)
        env = worker_runtime_env(cluster)
        env_vars = masked(env.get("env_vars"))
        plan = {
            "address": cluster.address or "a private local Ray on 127.0.0.1",
            "trainer": "ray.train.torch.TorchTrainer",
            "job": spec.job,
            "run_uri": spec.run_uri,
            "backend": "nccl" if cluster.use_gpu else "gloo",
            "num_workers": cluster.num_workers,
            "resources_per_worker": resources,
            "placement_strategy": cluster.placement_strategy,
            "max_failures": cluster.max_failures,
            "runtime_env": {**env, "env_vars": env_vars},
        }
        return "# cluster=ray: nothing is started\n" + json.dumps(plan, indent=2, default=str)

    def check_paths(self, cfg) -> None:
        from msca.cluster.ray_jobs import check_paths

        check_paths(cfg)

    def check(self, spec: JobSpec, cluster) -> None:
        if not cluster.wait:
            raise ValueError(
                f"cluster.wait=false needs a Ray Jobs API address (cluster.address=http://HEAD:8265), "
                f"not {cluster.address or 'a private local Ray'!r}: with a Ray client or GCS address "
                f"launch.py drives the trainer itself and must wait for it"
            )
        if spec.make_callable is None:
            raise ValueError("the Ray backend needs the job callable (launch.py passes jobs.JOBS)")

    def submit(self, spec: JobSpec, cluster) -> Handle:
        import ray

        job_key = f"ray-{uuid.uuid4().hex[:12]}"  # one launch = one job: a restarted group takes the lease over
        t0 = time.time()
        connect(cluster)
        try:
            where = cluster.address or f"a private local Ray ({ray.get_runtime_context().gcs_address})"
            print(
                f"[ray] connected to {where} in {time.time() - t0:.1f}s; job {job_key}: {cluster.num_workers} "
                f"worker(s), max_failures={cluster.max_failures}",
                flush=True,
            )
            result, error = fit(trainer_for(spec, cluster, job_key), job_key, cluster.max_failures)
            failed = recorded_failure(job_key)  # a deterministic failure, whatever fit() made of it
        finally:
            clear_stop(job_key)
            ray.shutdown()
        desc = f"job {job_key} ({cluster.num_workers} worker(s)) on {where}"
        if failed:
            print(f"[ray] the run failed and was not retried: {failed}", file=sys.stderr, flush=True)
            return Handle(self.name, desc, returncode=EXIT_USAGE)
        if error:
            return Handle(self.name, desc, returncode=EXIT_FAILED, error=error)
        outcome = result.return_value or {}
        status = outcome.get("status")
        if status == "stopped":
            return Handle(self.name, desc, returncode=EXIT_STOPPED)
        if status == "failed":
            print(f"[ray] the run failed and was not retried: {outcome['error']}", file=sys.stderr, flush=True)
            return Handle(self.name, desc, returncode=EXIT_USAGE)
        return Handle(self.name, desc, returncode=0)
