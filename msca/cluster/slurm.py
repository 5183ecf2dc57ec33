"""SLURM backend: the job from `jobs.JOBS` submitted through submitit (sbatch + one srun task per rank).

What SLURM needs beyond the job entry's own process setup is only what happens after a stop: when USR2 (the
time-limit warning we ask for with --signal) or SIGTERM (preemption) made the ranks commit a checkpoint, rank 0
requeues the job (if it is still RUNNING) and every rank exits; the requeued job resumes from the run home like
any other start. The only importer of
submitit besides tests.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from msca.cluster.base import Backend, Handle, JobSpec
from msca.runtime import failure
from msca.runtime.host import REPO, squeue

# Nothing heavy at import time (no torch, no boto3): submitit unpickles SlurmJob before it installs its USR2
# handler, and until then a USR2 kills the task (default action). Keep that window short.


class SlurmJob:
    """What every task runs: the job, then (after a stop) requeue-or-exit. Stateless, like the job itself."""

    def __init__(self, make_callable: Callable, run_uri: str, endpoint_url: str | None, max_requeues: int):
        self.make_callable, self.run_uri = make_callable, run_uri
        self.endpoint_url, self.max_requeues = endpoint_url, max_requeues

    def __call__(self):
        from msca.runtime.errors import EXIT_STOPPED
        from msca.runtime.preemption import StopRequested

        try:
            result = self.make_callable(self.run_uri, self.endpoint_url)()
            # Done: a late USR2/TERM must not kill the process while submitit writes the result or Python
            # shuts down (finalisation resets Python-level handlers to SIG_DFL, which kills; SIG_IGN stays).
            for sig in (signal.SIGUSR2, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
            from msca.runtime import dist

            dist.shutdown()  # the process groups go now, in order, not in the interpreter's teardown
            return result
        except StopRequested as stop:
            requeue_after_stop(stop, self.max_requeues)
            sys.exit(EXIT_STOPPED)  # SystemExit passes submitit's handler: no result file, the job is not "done"
        except Exception as err:
            from msca.runtime import failure

            failure.record(err)  # for `launch.py ... cluster.wait=true`: the first failing rank's story
            raise

    def checkpoint(self, *args, **kwargs):
        """Called by submitit's own USR2 handler, which is active only until the job installs ours (before
        training starts): nothing to save, so requeue a fresh instance (the dinov2 pattern)."""
        import submitit

        return submitit.helpers.DelayedSubmission(
            SlurmJob(self.make_callable, self.run_uri, self.endpoint_url, self.max_requeues)
        )


def requeue_after_stop(stop, max_requeues: int) -> None:
    """Called on every rank once the stop checkpoint is committed. Rank 0 requeues the job, then all ranks
    meet so none exits (and trips --kill-on-bad-exit) before the requeue is in.

    USR2 (our time-limit warning, or a manual `scancel --signal=USR2`) and SIGTERM (preemption: with a
    GraceTime a job that exits by itself during the grace period ends FAILED instead of being requeued by
    SLURM) both requeue. Where the job is no longer requeueable (a user's scancel, a time-out, an admin's
    requeue already in) the job is no longer RUNNING and is left alone (`scontrol requeue` would accept a
    cancelled job)."""
    import logging

    from msca.runtime import dist

    log = logging.getLogger(__name__)
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    if dist.is_main():
        job_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ["SLURM_JOB_ID"]
        state = job_state(job_id)
        if restarts >= max_requeues:
            log.warning("not requeued: %d requeues already (cluster.max_requeues=%d)", restarts, max_requeues)
        elif state != "RUNNING":  # scancel (CANCELLED), an admin's requeue already in, a time-out
            log.warning("not requeued: the job is %s (%s)", state, signal.Signals(stop.signum).name)
        else:
            r = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
            if r.returncode:
                log.warning("not requeued (%s): %s", signal.Signals(stop.signum).name, (r.stderr or r.stdout).strip())
            else:
                log.warning(
                    "requeued job %s (restart %d of at most %d) after the checkpoint at step %d",
                    job_id,
                    restarts + 1,
                    max_requeues,
                    stop.step,
                )
    dist.barrier()


def job_state(job_id: str) -> str:
    r = squeue(job_id, timeout_s=60)
    return r.stdout.split()[0] if r is not None and r.stdout.split() else "UNKNOWN"


# ------------------------------------------------------------------------------------------------ submit side
def submitit_folder(spec: JobSpec, cluster) -> Path:
    from msca.storage import is_remote

    if cluster.folder:
        return Path(os.path.expanduser(cluster.folder)).absolute() / spec.run_uri.rstrip("/").rsplit("/", 1)[-1]
    if is_remote(spec.run_uri):
        raise ValueError(
            "cluster.folder must be set when the run home is remote (store.root=s3://...): "
            "submitit's folder must be on a filesystem every node sees"
        )
    return Path(spec.run_uri) / "slurm"


def check_writable(folder: Path) -> None:
    """Create the folder and write a probe (os.access says yes to root even where writes fail)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"cluster.folder: cannot write {folder} ({err.strerror}); it must be writable and on a "
            "filesystem every node sees"
        ) from None


def sbatch_parameters(cluster, job_name: str, folder: Path) -> dict:
    params = dict(
        job_name=job_name,
        nodes=cluster.nodes,
        ntasks_per_node=cluster.tasks_per_node,
        cpus_per_task=cluster.cpus_per_task,
        time=cluster.time_min,
        signal_delay_s=cluster.signal_delay_s,
        srun_args=["--kill-on-bad-exit=1"],  # a rank that dies takes the others down at once
        setup=[
            # paths quoted: a space splits the word, a `$(...)` in a path would run on the compute node
            f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}",
            f"export MSCA_ERROR_DIR={shlex.quote(str(folder))}/errors-$SLURM_JOB_ID",
            *cluster.setup,
        ],
        stderr_to_stdout=True,
    )
    if cluster.gpus_per_node:
        params["gpus_per_node"] = cluster.gpus_per_node
    if cluster.mem_gb:
        params["mem"] = f"{cluster.mem_gb}GB"
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if getattr(cluster, key):
            params[key] = getattr(cluster, key)
    if cluster.additional:
        params["additional_parameters"] = dict(cluster.additional)
    return params


def executor(folder: Path, cluster, job_name: str, script_only: bool = False):
    """submitit's executor; `script_only` builds one on a machine without SLURM, for the dry run (submitit
    refuses to build one where it finds no `srun`)."""
    import submitit

    cls = submitit.SlurmExecutor
    if script_only:

        class ScriptOnly(submitit.SlurmExecutor):
            @classmethod
            def affinity(cls) -> int:
                return 2  # "srun found": only the script is made, nothing runs here

        cls = ScriptOnly
    ex = cls(folder=folder, max_num_timeout=cluster.max_requeues)
    ex.update_parameters(**sbatch_parameters(cluster, job_name, folder))
    return ex


def require_slurm() -> None:
    """SLURM's client commands must be here to submit: one line saying so, not submitit's traceback."""
    missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
    if missing:
        raise ValueError(
            f"cluster=slurm: no {' or '.join(f'`{c}`' for c in missing)} on PATH: run launch.py on a SLURM login "
            "node (or install SLURM's client commands and config here); cluster.dry_run=true prints the sbatch "
            "script on any machine"
        )


class SlurmBackend(Backend):
    name = "slurm"

    def ranks_run_here(self, cluster) -> bool:
        return False  # on the compute nodes: each rank checks its own devices at start

    def dry_run(self, spec: JobSpec, cluster) -> str:
        """The exact script sbatch gets (submitit's), writing nothing."""
        ex = executor(submitit_folder(spec, cluster), cluster, job_name(spec), script_only=True)
        return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")

    def check(self, spec: JobSpec, cluster) -> None:
        """Before the run home is written: sbatch --test-only accepts the script (partition, account,
        resources) and the folder is writable, so a bad request leaves no half-written run home."""
        require_slurm()
        try:
            r = subprocess.run(
                ["sbatch", "--test-only"], input=self.dry_run(spec, cluster), capture_output=True, text=True, timeout=60
            )
        except FileNotFoundError:
            raise ValueError("cluster=slurm: no `sbatch` on PATH (run launch.py on a SLURM login node)") from None
        if r.returncode:
            msg = " ".join(line.strip() for line in (r.stderr or r.stdout).splitlines() if line.strip())
            raise ValueError(f"SLURM rejected the job: {msg}")
        check_writable(submitit_folder(spec, cluster))

    def submit(self, spec: JobSpec, cluster) -> Handle:
        require_slurm()
        folder = submitit_folder(spec, cluster)
        ex = executor(folder, cluster, job_name(spec))
        job = ex.submit(SlurmJob(spec.make_callable, spec.run_uri, spec.endpoint_url, cluster.max_requeues))
        logs = folder / f"{job.job_id}_<task>_log.out"
        desc = (
            f"job {job.job_id} ({cluster.nodes} node(s) x {cluster.tasks_per_node} task(s)); "
            f"rank logs {logs} (task 0 = rank 0)"
        )
        follow = (
            f"follow it: squeue -j {job.job_id}; tail -f {folder}/{job.job_id}_0_log.out\n"
            f"stop it with a checkpoint (then it requeues): scancel --signal=USR2 {job.job_id}; "
            f"cancel: scancel {job.job_id}"
        )
        if not cluster.wait:
            return Handle(self.name, desc, follow=follow)
        from msca.runtime.errors import EXIT_STOPPED

        code = wait_for(job, folder)
        error = failure.first_failure(folder / f"errors-{job.job_id}") if code not in (0, EXIT_STOPPED) else None
        return Handle(self.name, desc, returncode=code, follow=follow, error=error)


def job_name(spec: JobSpec) -> str:
    return f"msca-{spec.job}-{spec.run_uri.rstrip('/').rsplit('/', 1)[-1]}"


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def wait_for(job, folder: Path, poll_s: float = 2.0) -> int:
    """Block until the job ends (through requeues), streaming state changes and rank 0's log."""
    log_path, pos, last = folder / f"{job.job_id}_0_log.out", 0, None
    while True:
        state = job.state
        if state != last:
            print(f"[slurm] job {job.job_id}: {state}", flush=True)
            last = state
        if log_path.exists():
            with open(log_path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
                pos += len(chunk)
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        if state.split(" ")[0] in ENDED:
            break
        time.sleep(poll_s)
    if state == "COMPLETED":
        return 0
    code = exit_code(job.job_id)
    return code if code else 1


def exit_code(job_id: str) -> int:
    r = subprocess.run(
        ["sacct", "-n", "-X", "-j", job_id, "-o", "ExitCode"], capture_output=True, text=True, timeout=60
    )
    try:
        return int(r.stdout.split()[0].split(":")[0])
    except (IndexError, ValueError):
        return 0
