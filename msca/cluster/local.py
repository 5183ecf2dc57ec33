"""Local backend: N rank processes on this machine (one per GPU with nccl, or CPU processes with gloo),
each running `python -m jobs <job> <run_uri>` with the torch.distributed environment set."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import torch

from msca.cluster.base import STOP_GRACE_S, Backend, Handle, JobSpec, stop_gracefully
from msca.runtime import failure
from msca.runtime.dist import free_port
from msca.runtime.errors import EXIT_KILLED, EXIT_STOPPED
from msca.runtime.host import REPO


def ranks_for(procs_per_node: int) -> int:
    if procs_per_node > 0:
        return procs_per_node
    return max(1, torch.cuda.device_count())


def rank_env(rank: int, world: int, port: int, threads: int) -> dict:
    env = dict(os.environ)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS=str(threads),
    )
    return env


class LocalBackend(Backend):
    name = "local"

    def ranks_run_here(self, cluster) -> bool:
        return True

    def commands(self, spec: JobSpec, cluster, job_key: str) -> tuple[list[str], list[dict]]:
        """The rank command and each rank's environment (what `submit` starts and a dry run prints)."""
        world = ranks_for(cluster.procs_per_node)
        port = cluster.master_port or free_port()
        threads = max(1, (os.cpu_count() or 1) // world)
        cmd = [sys.executable, "-m", "jobs", spec.job, spec.run_uri]
        if spec.endpoint_url:
            cmd += ["--endpoint-url", spec.endpoint_url]
        envs = []
        for r in range(world):
            env = rank_env(r, world, port, threads)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)  # `jobs`
            env.update(MSCA_BACKEND=self.name, MSCA_JOB_KEY=job_key, **{failure.ERROR_DIR_ENV: spec.log_dir})
            envs.append(env)
        return cmd, envs

    def dry_run(self, spec: JobSpec, cluster) -> str:
        cmd, envs = self.commands(spec, cluster, "local-<id>")
        keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS", "PYTHONPATH")
        lines = [f"# cluster=local: {len(envs)} rank process(es) on this machine, started in {REPO}"]
        lines += [" ".join(f"{k}={shlex.quote(env[k])}" for k in keys) + " " + shlex.join(cmd) for env in envs]
        return "\n".join(lines)

    def submit(self, spec: JobSpec, cluster) -> Handle:
        log_dir = Path(spec.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        job_key = f"local-{uuid.uuid4().hex[:12]}"  # one launch = one job (its lease and attempts say so)
        cmd, envs = self.commands(spec, cluster, job_key)
        world = len(envs)
        failure.clear(log_dir)  # error records of an earlier launch are not this one's story
        procs, logs = [], []
        for r, env in enumerate(envs):
            if r == 0 and cluster.foreground:
                out = None  # rank 0 talks to the terminal (progress bar, logs)
            else:
                out = open(log_dir / f"rank{r}.log", "ab")
                logs.append(out)
            procs.append(
                subprocess.Popen(
                    cmd,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT if out else None,
                    start_new_session=not cluster.foreground,
                )
            )
        desc = f"{world} local rank(s), pids {[p.pid for p in procs]}, logs in {log_dir}"
        if not cluster.foreground:
            return Handle(self.name, desc)
        try:
            code = wait_all(procs, log_dir=log_dir)
        finally:
            for f in logs:
                f.close()
        error = failure.first_failure(log_dir) if code not in (0, EXIT_STOPPED, EXIT_KILLED) else None
        return Handle(self.name, desc, returncode=code, error=error)


def wait_all(procs: list[subprocess.Popen], stop_grace_s: float = STOP_GRACE_S, log_dir: Path | None = None) -> int:
    """Wait for every rank; if one fails, stop the others (a lone survivor would hang in a collective).

    On Ctrl-C the ranks are asked to stop (SIGTERM): they save a checkpoint at the next step and exit with
    EXIT_STOPPED, so we wait for that; a second Ctrl-C (or the grace period) stops them hard."""

    def request_stop(_signum: int) -> None:
        for p in procs:  # also when Ctrl-C did not reach them (another process group); a repeat is harmless
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    try:
        return stop_gracefully(
            lambda deadline: poll_until_done(procs, deadline=deadline, log_dir=log_dir),
            request_stop,
            "the ranks",
            "kill",
            stop_grace_s,
        )
    except KeyboardInterrupt:
        terminate(procs, grace_s=0)
        raise


def poll_until_done(procs: list[subprocess.Popen], deadline: float | None = None, log_dir: Path | None = None) -> int:
    """0 when all ranks succeed; else the first non-zero exit code (the others are stopped). A rank that
    recorded how its job ended (msca.runtime.failure.record_end) is judged by that record, not by a signal that hit
    the process after it (its work is committed: stopping the others then would cut rank 0's last writes)."""
    while deadline is None or time.time() < deadline:
        codes = [ended_code(p, r, log_dir) for r, p in enumerate(procs)]
        failed = [c for c in codes if c not in (None, 0)]
        if failed and (failed[0] != EXIT_STOPPED or all(c is not None for c in codes)):
            terminate(procs)
            return failed[0]
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.2)
    terminate(procs)  # the grace period is over: no stop checkpoint was committed by these ranks
    return EXIT_KILLED


def ended_code(proc: subprocess.Popen, rank: int, log_dir: Path | None) -> int | None:
    code = proc.poll()
    if code is None or code == 0 or log_dir is None:
        return code
    recorded = failure.recorded_end(log_dir, rank)
    if recorded is not None and recorded != code:
        print(
            f"warning: rank {rank} ended its job with exit {recorded}, then its process exited with {code} "
            f"while shutting down; counted as {recorded}",
            file=sys.stderr,
            flush=True,
        )
        proc.returncode = recorded  # warn once
        return recorded
    return code


def terminate(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
