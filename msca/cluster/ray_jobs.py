"""Ray Jobs API mode, `cluster.address=http://HEAD:8265`: launch.py here submits launch.py itself as a Ray job and
returns at once (`cluster.wait=false`) or follows the job's log to its end (`cluster.wait=true`).

The job runs `python launch.py <the same overrides> cluster.address=auto run.name=<this run>` on the cluster's
head node, in a copy of this checkout that Ray uploads (runtime_env.working_dir; .gitignore'd files stay here).
So the cluster's own facts resolve there (its MSCA_STORE_ROOT, data paths, configs/local), and the head does all
that a launch typed on it does: lease, data check, run home, the Ray Train trainer, resume. Nothing is written
from this machine, which may not even see the cluster's filesystem. A stop (`ray job stop`, or Ctrl-C while
following) sends the head's launch.py SIGTERM, which asks the workers to commit a checkpoint first; the cluster
must give it time (RAY_JOB_STOP_WAIT_TIME_S on the head: infra/ray/README.md).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shlex
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

from omegaconf import DictConfig

from msca.cluster.ray_env import forwarded_env_vars, job_runtime_env, masked, user_runtime_env
from msca.runtime.errors import EXIT_FAILED, EXIT_STOPPED
from msca.runtime.host import REPO

PINNED = ("cluster", "cluster.address", "cluster.wait", "run.name")  # what the job's own launch.py is told
PROBE_TIMEOUT_S = 10.0
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
LOST_CONTACT_S = 120.0  # following a job: how long the Jobs API may stay silent before launch.py gives up


def is_jobs_address(address: str) -> bool:
    return address.startswith(("http://", "https://"))


def in_uploaded_copy() -> bool:
    """launch.py runs in Ray's temporary copy of the submitter's checkout (deleted with the session)."""
    return bool(job_runtime_env().get("working_dir"))


def check_paths(cfg: DictConfig) -> None:
    """Inside an uploaded copy a relative path would put data or runs in a folder Ray deletes, seen by no other
    node: refuse it, naming the key."""
    if not in_uploaded_copy():
        return
    from msca.config import local_paths

    for key, value in local_paths(cfg):
        if not os.path.isabs(os.path.expanduser(value)):
            raise ValueError(
                f"{key}={value!r} is relative, and this launch.py runs in Ray's temporary copy of the "
                f"code on the head node: set {key} to a path every node sees or s3://... (on the "
                f"command line, or MSCA_STORE_ROOT / MSCA_DATA_ROOT in the cluster's environment)"
            )


def entrypoint(overrides: list[str], run_name: str) -> str:
    """The same overrides, with the backend, address, wait and run name pinned for the head."""
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in (*PINNED, "cluster.dry_run")]
    return shlex.join(
        [
            "python",
            "launch.py",
            *keep,
            "cluster=ray",
            "cluster.address=auto",
            "cluster.wait=true",
            f"run.name={run_name}",
        ]
    )


def submission_runtime_env(cluster) -> dict:
    """The user's runtime_env, plus this checkout as the working_dir (unless one is given) and the store endpoint
    of this shell (its credentials only with cluster.forward_credentials); every worker of the job inherits it."""
    env = user_runtime_env(cluster)
    env.setdefault("working_dir", str(REPO))
    env["env_vars"] = forwarded_env_vars(env.get("env_vars"), cluster.forward_credentials)
    from msca.runtime.host import git_sha  # launch.json on the head records where the run was launched from

    env["env_vars"].update(
        MSCA_SUBMITTED_FROM=f"{getpass.getuser()}@{socket.gethostname()}",
        **({"MSCA_GIT_SHA": sha} if (sha := git_sha()) else {}),
    )
    return env


def describe_submission(cfg: DictConfig, overrides: list[str]) -> str:
    """A dry run: the entrypoint and runtime_env the Jobs API would get (secrets as names only); nothing sent."""
    env = submission_runtime_env(cfg.cluster)
    env["env_vars"] = masked(env["env_vars"])
    plan = {"address": cfg.cluster.address, "entrypoint": entrypoint(overrides, cfg.run.name), "runtime_env": env}
    return "# cluster=ray (Jobs API): nothing is submitted\n" + json.dumps(plan, indent=2, default=str)


def call(address: str, path: str, method: str = "GET", timeout_s: float = PROBE_TIMEOUT_S) -> dict:
    """One Jobs API request with a deadline (the Ray SDK's requests have none: a silent head would hang us)."""
    request = urllib.request.Request(address.rstrip("/") + path, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:
        return json.loads(reply.read() or b"{}")


def probe(address: str) -> None:
    """Fail in one line, within PROBE_TIMEOUT_S, when no Jobs API answers at the address."""
    fix = (
        "start the head with the dashboard (ray start --head --dashboard-host=0.0.0.0; needs ray[default]) "
        "or fix cluster.address"
    )
    try:
        call(address, "/api/version")
    except urllib.error.HTTPError as err:
        raise ConnectionError(
            f"cluster.address={address}: /api/version answered HTTP {err.code}; not a Ray Jobs API? {fix}"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise ConnectionError(
            f"cluster.address={address}: no Ray Jobs API answers there within {PROBE_TIMEOUT_S:.0f}s ({reason}); {fix}"
        ) from None


class LogTail:
    """Prints the job's log as it comes (its launch.py's output and the workers' lines). Ray closes the stream
    seconds after the job ends; `finish` prints the rest from the full log at once instead of waiting."""

    def __init__(self, client, job_id: str):
        self.client, self.job_id = client, job_id
        self.printed, self.closed, self.lock = 0, False, threading.Lock()
        threading.Thread(target=self.run, name="ray-job-log", daemon=True).start()

    def run(self) -> None:
        async def stream():
            async for chunk in self.client.tail_job_logs(self.job_id):
                with self.lock:
                    if self.closed:
                        return
                    sys.stdout.write(chunk)
                    sys.stdout.flush()
                    self.printed += len(chunk)

        try:
            asyncio.run(stream())
        except Exception as err:  # noqa: BLE001 - the stream broke: finish() prints the rest
            print(f"[ray] log stream ended: {type(err).__name__}: {err}", file=sys.stderr, flush=True)

    def finish(self, address: str) -> None:
        with self.lock:
            self.closed = True
        try:
            rest = call(address, f"/api/jobs/{self.job_id}/logs", timeout_s=60).get("logs", "")[self.printed :]
        except (OSError, ValueError) as err:
            rest = f"[ray] the end of the job's log could not be read ({err}): ray job logs {self.job_id}\n"
        sys.stdout.write(rest)
        sys.stdout.flush()


def job_info(address: str, job_id: str, answered_at: float) -> dict | None:
    """The job's details (status, message, driver_exit_code); None while the head does not answer, until
    LOST_CONTACT_S after its last answer (at `answered_at`)."""
    try:
        return call(address, f"/api/jobs/{job_id}")
    except (OSError, ValueError) as err:  # the head is restarting or unreachable
        if time.time() - answered_at > LOST_CONTACT_S:
            raise ConnectionError(
                f"cluster.address={address}: no answer about job {job_id} for {LOST_CONTACT_S:.0f}s "
                f"({type(err).__name__}); it may still run: ray job status --address {address} "
                f"{job_id}"
            ) from None
        return None


def follow(client, job_id: str, address: str, poll_s: float = 1.0) -> dict | None:
    """Wait for the job's end while its log streams; Ctrl-C asks it to stop with a checkpoint, a second
    Ctrl-C leaves it running. Returns its details, or None when left running."""
    log = LogTail(client, job_id)
    stopping, answered_at = False, time.time()
    while True:
        try:
            info = job_info(address, job_id, answered_at)
            if info:
                answered_at = time.time()
                if info.get("status") in TERMINAL:
                    break
            time.sleep(poll_s)
        except KeyboardInterrupt:
            if stopping:
                print(
                    f"[ray] left running; stop it with: ray job stop --address {address} {job_id}",
                    file=sys.stderr,
                    flush=True,
                )
                return None
            stopping = True
            print(
                f"stopping job {job_id}: its workers save a checkpoint first (Ctrl-C again to leave it running)",
                file=sys.stderr,
                flush=True,
            )
            try:
                call(address, f"/api/jobs/{job_id}/stop", method="POST")
            except (OSError, ValueError) as err:
                print(
                    f"[ray] the stop request failed ({err}); again: ray job stop --address {address} {job_id}",
                    file=sys.stderr,
                    flush=True,
                )
    log.finish(address)
    return info


def exit_code(info: dict) -> int:
    if info["status"] == "SUCCEEDED":
        return 0
    if info["status"] == "STOPPED":
        return EXIT_STOPPED
    return info.get("driver_exit_code") or EXIT_FAILED


def submit_launch(cfg: DictConfig, overrides: list[str]) -> int:
    """Submit launch.py as a Ray job on the cluster at cfg.cluster.address; follow it when cluster.wait."""
    address = cfg.cluster.address
    probe(address)
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    command = entrypoint(overrides, cfg.run.name)
    t0 = time.time()
    try:
        job_id = client.submit_job(
            entrypoint=command,
            runtime_env=submission_runtime_env(cfg.cluster),
            metadata={"msca_run": str(cfg.run.name)},
        )
    except RuntimeError as err:  # the server's answer (a bad runtime_env, a package too large): one line
        raise ConnectionError(
            f"cluster.address={address}: the Ray Jobs API refused the job: {str(err).splitlines()[0]}"
        ) from None
    print(
        f"run {cfg.run.name}: submitted to {address} as job {job_id} in {time.time() - t0:.1f}s; its launch.py "
        f"runs on the head node: {command}",
        flush=True,
    )
    if not cfg.cluster.wait:
        print(
            f"follow it: ray job logs --address {address} --follow {job_id}\n"
            f"stop it (with a checkpoint): ray job stop --address {address} {job_id}\n"
            f"once it has ended, the same command (run.name={cfg.run.name}) resumes it",
            flush=True,
        )
        return 0
    info = follow(client, job_id, address)
    if info is None:
        return EXIT_STOPPED
    code = exit_code(info)
    print(
        f"[ray] job {job_id} {info['status']}" + (f": {info.get('message')}" if code and info.get("message") else ""),
        file=sys.stderr if code else sys.stdout,
        flush=True,
    )
    return code
