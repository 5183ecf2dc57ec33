"""`launch.py cluster=ray` on a real two-node Ray cluster (tests/ray_cluster.py): a run spans node1 and node2 and
ends bit-identical to the same run under the local backend; a worker killed with kill -9 mid-run makes Ray restart
the group, which resumes from the newest committed step and still ends bit-identical; a run moves between the
local and Ray backends through S3 in both directions; a deterministic failure is not retried.

Every launch under Ray runs the way a user on the head node would (node1's network namespace, address of the
head); the reference runs under the local backend on this host, so every comparison is also cross-backend."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from launch_helpers import REPO, metrics, run_launch, small_overrides, start_launch

from msca.runstate.attempts import read_attempts
from msca.storage import open_store

pytestmark = pytest.mark.slow  # real processes: launch.py, ranks, or clusters

# 6 videos x 4 classes = 24 clips / 2 ranks / batch 2 -> 6 steps per epoch
EPOCHS = 12
TOTAL = 6 * EPOCHS
COMMON = [
    "deepspeed=zero2",
    f"train.epochs={EPOCHS}",
    "train.val_every=0",
    "eval.at_end=false",
    "data.batch_size=2",
    "checkpoint.every_steps=3",
    "model.drop_path_rate=0.2",
]
LOCAL2 = ["cluster.procs_per_node=2"]


def on_ray(cluster, extra=()) -> list[str]:
    return [
        "cluster=ray",
        "cluster.num_workers=2",
        f"cluster.address={cluster.address}",
        "cluster.max_failures=2",
        *extra,
    ]


def launch_on_head(cluster, overrides: list[str], env: dict | None = None, timeout: int = 400):
    return run_launch(overrides, env, timeout, wrap=tuple(cluster.on_head()))


def weights(home_or_bytes):
    data = home_or_bytes if isinstance(home_or_bytes, bytes) else (home_or_bytes / "model.pt").read_bytes()
    return torch.load(io.BytesIO(data), weights_only=True)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def train_steps(records) -> list[int]:
    return [m["step"] for m in records if m["kind"] == "train"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run, uninterrupted, under the local backend with the same world size (2 ranks)."""
    tmp = tmp_path_factory.mktemp("ray")
    proc = run_launch(small_overrides(tmp, tmp / "data", "ref") + COMMON + LOCAL2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp, weights(tmp / "store" / "runs" / "ref")


def test_two_workers_on_two_nodes_complete_and_match_the_local_backend(reference, ray_cluster):
    tmp, ref = reference
    t0 = time.time()
    proc = launch_on_head(ray_cluster, small_overrides(tmp, tmp / "data", "two") + COMMON + on_ray(ray_cluster))
    seconds = time.time() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    hosts = re.search(r"2 rank\(s\) on (node\d) \(rank 0\), (node\d) \(rank 1\)", out)  # Ray picks the order
    assert hosts and {hosts.group(1), hosts.group(2)} == {"node1", "node2"}, out[-5000:]
    ips = set(re.findall(r"\(ip=(10\.78\.0\.\d), pid=\d+\) world_rank=\d", out))
    assert ips == {"10.78.0.1", "10.78.0.2"}
    assert train_steps(metrics(tmp / "store", "two")) == list(range(1, TOTAL + 1))
    assert_same_weights(ref, weights(tmp / "store" / "runs" / "two"))
    launches = json.loads((tmp / "store" / "runs" / "two" / "launch.json").read_text())
    assert [entry["backend"] for entry in launches] == ["ray"]
    print(f"two-node Ray run ({TOTAL} steps): {seconds:.1f}s from launch.py to exit")


def wait_step(store, name, step: int, proc, timeout: float = 240) -> int:
    deadline = time.time() + timeout
    path = store / "runs" / name / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if path.exists():
            steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if '"train"' in line]
            if steps and steps[-1] >= step:
                return steps[-1]
        time.sleep(0.02)
    raise TimeoutError(f"run {name} did not reach step {step} (launcher exit {proc.poll()})")


def launch_with_fault(overrides: list[str], store, name: str, at_step: int, fault, wrap=(), timeout: int = 400):
    """launch.py in the background; once run `name` has logged step `at_step` in `store`, `fault(proc)` runs (a
    kill, a signal); then the launcher is awaited. Returns (exit code, merged output, what fault returned)."""
    proc = start_launch(overrides, wrap=wrap, merged=True)
    try:
        wait_step(store, name, at_step, proc)
        done = fault(proc)
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, done


def ctrl_c(proc) -> float:
    """What Ctrl-C does to the launcher; returns when."""
    proc.send_signal(signal.SIGINT)
    return time.time()


def kill_node2_worker(cluster) -> int:
    victims = cluster.train_workers("node2")
    assert len(victims) == 1, victims
    os.kill(victims[0], 9)
    return victims[0]


def assert_resumed_exactly(out: str, store, name: str, ref, first_ok: int) -> int:
    """One restart of the group, resumed from a committed step >= first_ok; every step logged once; the final
    weights bit-identical to the uninterrupted run's. Returns the step it resumed from."""
    resumed = [int(s) for s in re.findall(r"resumed from \S+/step_(\d+) \(step \d+\)", out)]
    assert len(resumed) == 1 and first_ok <= resumed[0] < TOTAL, out[-6000:]
    assert out.count("Started training worker group of size 2") == 2  # the first group and its restart
    steps = train_steps(metrics(store, name))
    assert steps[-1] == TOTAL and sorted(set(steps)) == list(range(1, TOTAL + 1))
    assert_same_weights(ref, weights(store / "runs" / name))
    return resumed[0]


def test_a_killed_worker_restarts_the_group_which_resumes_exactly(reference, ray_cluster):
    tmp, ref = reference
    overrides = small_overrides(tmp, tmp / "data", "kill") + COMMON + on_ray(ray_cluster)
    code, out, (t_kill, _) = launch_with_fault(
        overrides,
        tmp / "store",
        "kill",
        8,
        lambda _: (time.time(), kill_node2_worker(ray_cluster)),
        wrap=ray_cluster.on_head(),
    )
    assert code == 0, out[-6000:]
    home = tmp / "store" / "runs" / "kill"
    resumed = assert_resumed_exactly(out, tmp / "store", "kill", ref, 3)
    attempts = read_attempts(open_store(str(home)))  # the ledger: one Ray job, two attempts of it
    assert [a.backend for a in attempts] == ["ray", "ray"] and attempts[0].job_key == attempts[1].job_key
    assert attempts[1].restored_step == resumed and attempts[1].end_reason == "finished"
    print(
        f"kill -9 of node2's worker -> restart -> resumed from step {resumed} -> done "
        f"{time.time() - t_kill:.1f}s after the kill"
    )


def test_a_lost_node_is_replaced_and_the_run_resumes_exactly(reference, ray_cluster):
    """node2 dies whole (raylet, agents and worker: SIGKILL to every process in its namespace) and a fresh node2
    with an empty local disk joins: Ray restarts the group on it, which resumes from the newest committed step
    and ends bit-identical to the uninterrupted run, each step recorded once."""
    tmp, ref = reference

    def lose_node2(_proc):
        t_loss = time.time()
        ray_cluster.kill_node2()
        ray_cluster.start_node2()
        return t_loss

    code, out, t_loss = launch_with_fault(
        small_overrides(tmp, tmp / "data", "nodeloss") + COMMON + on_ray(ray_cluster),
        tmp / "store",
        "nodeloss",
        8,
        lose_node2,
        wrap=ray_cluster.on_head(),
    )
    assert code == 0, out[-6000:]
    resumed = assert_resumed_exactly(out, tmp / "store", "nodeloss", ref, 6)
    print(f"node2 lost and replaced -> resumed from step {resumed} -> done {time.time() - t_loss:.1f}s after")


def test_a_killed_worker_with_no_restart_left_fails_in_one_line_naming_it(reference, ray_cluster):
    """cluster.max_failures=0: the kill ends the run; launch.py names the dead worker (rank, node, pid) in one line
    instead of Ray's multi-line report, and says from which committed step the same command resumes."""
    tmp, _ = reference
    ray = [o for o in on_ray(ray_cluster) if not o.startswith("cluster.max_failures=")] + ["cluster.max_failures=0"]
    code, out, victim = launch_with_fault(
        small_overrides(tmp, tmp / "data", "norestart") + COMMON + ray,
        tmp / "store",
        "norestart",
        4,
        lambda _: kill_node2_worker(ray_cluster),
        wrap=ray_cluster.on_head(),
        timeout=240,
    )
    assert code == 1, out[-5000:]
    failed = [line for line in out.splitlines() if line.startswith("run norestart failed (exit 1): ")]
    assert len(failed) == 1, out[-5000:]
    assert re.search(rf"rank \d on node2 \(pid {victim}\): its process died", failed[0]), failed[0]
    assert "cluster.max_failures=0 used up" in failed[0]
    assert re.search(r"the same command then resumes it from step (\d+), its newest committed checkpoint", out)
    assert out.count("Started training worker group of size 2") == 1  # no restart


def test_ctrl_c_stops_the_workers_with_a_checkpoint_and_a_local_relaunch_finishes_exactly(reference, ray_cluster):
    """Ray Train runs the job off the main thread (no signal handlers there): Ctrl-C on launch.py reaches the
    workers through Ray's KV store, they commit a checkpoint at the next step and the launcher exits 3."""
    tmp, ref = reference
    overrides = small_overrides(tmp, tmp / "data", "stop") + COMMON + on_ray(ray_cluster)
    code, out, t_signal = launch_with_fault(
        overrides, tmp / "store", "stop", 5, ctrl_c, wrap=ray_cluster.on_head(), timeout=240
    )
    assert code == 3, out[-6000:]
    stop = int(re.search(r"stop requested \(SIGINT\): saving step (\d+)", out).group(1))
    assert 5 <= stop < TOTAL
    home = tmp / "store" / "runs" / "stop"
    assert (home / "checkpoints" / f"step_{stop:09d}" / "MANIFEST.json").exists()
    assert out.count("Started training worker group of size 2") == 1  # a stop is not a failure: no restart
    seconds = time.time() - t_signal

    again = run_launch(small_overrides(tmp, tmp / "data", "stop") + COMMON + LOCAL2)
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(rf"resumed from \S+/step_{stop:09d} \(step {stop}\)", again.stderr), again.stderr[-3000:]
    assert_same_weights(ref, weights(home))
    print(f"Ctrl-C -> stop at step {stop}, launcher exit 3 after {seconds:.1f}s; finished locally")


@pytest.mark.parametrize("first,second", [("local", "ray"), ("ray", "local")])
def test_a_run_moves_between_backends_through_s3(reference, ray_cluster, ray_s3, tmp_path, first, second):
    """Stopped at step 10 (train.max_steps) under one backend, finished under the other from S3; the local
    side uses its own cache folder, so nothing but the store carries the run between them."""
    tmp, ref = reference
    bucket = ray_s3.make_bucket()
    root = f"s3://{bucket}/team"
    name = f"{first}-to-{second}"
    base = [o for o in small_overrides(tmp, tmp / "data", name) if not o.startswith("store.root=")]
    base += COMMON + [f"store.root={root}", f"store.endpoint_url={ray_s3.endpoint_url}"]
    env = {**ray_s3.env, "MSCA_CACHE": str(tmp_path / "local-cache")}

    def launch(backend, extra):
        if backend == "local":
            return run_launch(base + LOCAL2 + extra, env=env)
        if first == "local":  # from this machine through Ray Client (the head's port 10001), not on the head
            client = f"cluster.address=ray://{ray_cluster.address.split(':')[0]}:10001"
            return run_launch(base + on_ray(ray_cluster) + extra + [client], env=env, timeout=400)
        return launch_on_head(ray_cluster, base + on_ray(ray_cluster) + extra, env=env)

    part = launch(first, ["train.max_steps=10"])
    assert part.returncode == 0, (part.stdout + part.stderr)[-5000:]
    store = ray_s3.store(f"{root}/runs/{name}")
    assert store.exists("checkpoints/step_000000010/MANIFEST.json")
    rest = launch(second, [])
    out = rest.stdout + rest.stderr
    assert rest.returncode == 0, out[-5000:]
    assert f"resumed from {root}/runs/{name}/checkpoints/step_000000010 (step 10)" in out, out[-5000:]

    assert_same_weights(ref, weights(store.read_bytes("model.pt")))
    launches = json.loads(store.read_text("launch.json"))
    assert [entry["backend"] for entry in launches] == [first, second]
    steps = train_steps(json.loads(line) for line in store.read_text("metrics.jsonl").splitlines())
    assert steps == list(range(1, TOTAL + 1))  # continuous across machines: every step exactly once
    assert [a.backend for a in read_attempts(store)] == [first, second]


def test_a_deterministic_failure_is_not_retried(reference, ray_cluster, tmp_path):
    """A batch larger than a rank's share of the data fails the same way on every start: one worker group, the
    cause on the launcher's stderr, exit 2, instead of max_failures restarts."""
    tmp, _ = reference
    t0 = time.time()
    proc = launch_on_head(
        ray_cluster, small_overrides(tmp, tmp / "data", "bad") + COMMON + on_ray(ray_cluster) + ["data.batch_size=64"]
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-5000:]
    # the group that hit it is torn down; a restarted one finds the failure recorded and ends before any work
    assert out.count("Started training worker group of size 2") <= 2, out[-5000:]
    assert re.search(
        r"the run failed and was not retried: rank \d on node\d: ValueError: an epoch has 24 clips: fewer than one "
        r"global batch of 128",
        proc.stderr,
    ), proc.stderr
    print(f"deterministic failure reported in {time.time() - t0:.1f}s")


def test_a_deterministic_error_on_node2_alone_ends_the_run_at_once_naming_it(reference, ray_cluster, ray_s3):
    """node2's scratch is squatted by another user (its msca-<uid> folder belongs to nobody), so only the rank on
    node2 fails, deterministically; its peer on node1 must not wait for the collective timeout (600 s) nor Ray
    restart the group max_failures times: the run ends within 60 s naming node2's error."""
    import shutil

    tmp, _ = reference
    squat = ray_cluster.dir / "local" / "node2" / f"msca-{os.getuid()}"
    ours = squat.with_name(squat.name + ".ours")  # node2's own scratch from earlier runs, put back after
    if squat.exists():
        squat.rename(ours)
    squat.mkdir(parents=True)
    os.chown(squat, 65534, 65534)
    bucket = ray_s3.make_bucket()
    overrides = [o for o in small_overrides(tmp, tmp / "data", "node2bad") if not o.startswith("store.root=")]
    overrides += COMMON + [f"store.root=s3://{bucket}/team", f"store.endpoint_url={ray_s3.endpoint_url}"]
    try:
        t0 = time.time()
        proc = launch_on_head(ray_cluster, overrides + on_ray(ray_cluster), env=ray_s3.env, timeout=300)
        took = time.time() - t0
    finally:
        shutil.rmtree(squat)
        if ours.exists():
            ours.rename(squat)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-5000:]
    assert re.search(
        r"the run failed and was not retried: rank \d on node2: PermissionError: .*msca-\d+", proc.stderr
    ), proc.stderr[-3000:]
    assert took < 60, f"the run took {took:.0f}s to end"  # the bound the issue sets, not a performance claim
    print(f"a deterministic error on node2 alone ended the run in {took:.1f}s")


def jobs_api(cluster, extra=()) -> list[str]:
    """launch.py on this machine (outside the cluster's namespaces) submitting to the head's Jobs API."""
    return [
        "cluster=ray",
        "cluster.num_workers=2",
        f"cluster.address={cluster.jobs_address}",
        "cluster.max_failures=2",
        *extra,
    ]


def wait_job(cluster, job_id: str, timeout: float = 400):
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.jobs_address)
    deadline = time.time() + timeout
    while not client.get_job_status(job_id).is_terminal():
        assert time.time() < deadline, f"job {job_id} did not end in {timeout}s"
        time.sleep(0.5)
    return client.get_job_info(job_id), client.get_job_logs(job_id)


def test_jobs_api_returns_at_once_and_the_run_finishes_on_the_cluster(reference, ray_cluster):
    """cluster.address=http://HEAD:8265 cluster.wait=false: launch.py submits itself as a Ray job and exits; the
    job's launch.py runs on the head node (its launch.json entry says node1) and the run ends bit-identical."""
    tmp, ref = reference
    t0 = time.time()
    proc = run_launch(
        small_overrides(tmp, tmp / "data", "jobs") + COMMON + jobs_api(ray_cluster, ["cluster.wait=false"]), timeout=120
    )
    returned_s = time.time() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = re.search(r"as job (raysubmit_\w+)", proc.stdout).group(1)
    assert f"ray job stop --address {ray_cluster.jobs_address} {job_id}" in proc.stdout
    info, logs = wait_job(ray_cluster, job_id)
    assert str(info.status) == "SUCCEEDED", logs[-5000:]
    assert re.search(r"2 rank\(s\) on node\d \(rank 0\), node\d \(rank 1\)", logs), logs[-5000:]
    assert train_steps(metrics(tmp / "store", "jobs")) == list(range(1, TOTAL + 1))
    assert_same_weights(ref, weights(tmp / "store" / "runs" / "jobs"))
    launches = json.loads((tmp / "store" / "runs" / "jobs" / "launch.json").read_text())
    assert [(entry["backend"], entry["host"]) for entry in launches] == [("ray", "node1")]
    import socket  # the head's copy has no .git: the submitter's commit and user@host come with the job

    assert (
        launches[0]["git_sha"]
        == subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    )
    assert launches[0]["submitted_from"].endswith("@" + socket.gethostname())
    print(f"Jobs API: launch.py returned {returned_s:.1f}s after it started; the job then ran to the end")


def test_jobs_api_follows_the_log_and_ctrl_c_stops_the_job_with_a_checkpoint(reference, ray_cluster):
    """cluster.wait=true streams the job's log; Ctrl-C becomes `ray job stop` (SIGTERM to the head's launch.py),
    the workers commit a checkpoint, the job ends STOPPED and launch.py exits 3; the same command resumes it."""
    tmp, ref = reference
    overrides = small_overrides(tmp, tmp / "data", "jobstop") + COMMON + jobs_api(ray_cluster)
    code, out, _ = launch_with_fault(overrides, tmp / "store", "jobstop", 5, ctrl_c, timeout=240)
    assert code == 3, out[-6000:]
    assert "Started training worker group of size 2" in out  # the workers' lines came through the job's log
    stop = int(re.search(r"stop requested \(SIGTERM\): saving step (\d+)", out).group(1))
    assert 5 <= stop < TOTAL
    assert re.search(r"\[ray\] job raysubmit_\w+ STOPPED", out), out[-3000:]
    assert (tmp / "store" / "runs" / "jobstop" / "checkpoints" / f"step_{stop:09d}" / "MANIFEST.json").exists()

    again = run_launch(overrides, timeout=400)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-6000:]
    assert re.search(rf"resumed from \S+/step_{stop:09d} \(step {stop}\)", out), out[-6000:]
    assert re.search(r"\[ray\] job raysubmit_\w+ SUCCEEDED", out)
    assert train_steps(metrics(tmp / "store", "jobstop")) == list(range(1, TOTAL + 1))
    assert_same_weights(ref, weights(tmp / "store" / "runs" / "jobstop"))


def test_jobs_api_relative_store_root_is_refused_on_the_head(ray_cluster, tmp_path):
    """A relative path would land in Ray's temporary copy of the code on the head: the job's launch.py refuses it
    in one line, the job fails, and the submitting launch.py exits with its code (2)."""
    overrides = [o for o in small_overrides(tmp_path, tmp_path / "data", "rel") if not o.startswith("store.root=")]
    proc = run_launch(overrides + ["store.root=outputs-rel"] + jobs_api(ray_cluster), timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-4000:]
    assert "error: store.root='outputs-rel' is relative, and this launch.py runs in Ray's temporary copy" in out
    assert re.search(r"\[ray\] job raysubmit_\w+ FAILED", proc.stderr), proc.stderr


@pytest.mark.parametrize(
    "override,message",
    [
        ("cluster.num_workers=0", "cluster.num_workers=0 must be >= 1"),
        ("cluster.placement_strategy=EVERYWHERE", "cluster.placement_strategy='EVERYWHERE' is not one of"),
        ("cluster.partition=gpu", "cluster.partition is a cluster=slurm option; cluster=ray has no such key"),
        ("cluster.wait=false", "cluster.wait=false needs a Ray Jobs API address"),
        ("cluster.address=http://127.0.0.1:9", "cluster.address=http://127.0.0.1:9: no Ray Jobs API answers there"),
    ],
)
def test_bad_ray_options_are_one_error_line_and_no_run_home(tmp_path, override, message):
    """Refused by launch.py before Ray starts or anything is written (no cluster needed)."""
    proc = run_launch(small_overrides(tmp_path, tmp_path / "data", "bad") + ["cluster=ray", override], timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not (tmp_path / "store").exists()


def test_a_silent_jobs_api_address_is_one_error_line_within_the_probe_timeout(tmp_path):
    """A server that accepts the connection and never answers (a hung head): launch.py gives up after its 10 s
    probe with one line, instead of waiting forever in the Ray client."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the kernel's backlog; nothing ever reads or answers
    try:
        t0 = time.time()
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        proc = run_launch(
            small_overrides(tmp_path, tmp_path / "data", "silent") + ["cluster=ray", f"cluster.address={address}"],
            timeout=120,
        )
        seconds = time.time() - t0
    finally:
        silent.close()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no Ray Jobs API answers there within 10s" in errors[0], proc.stderr
    assert seconds < 60 and not (tmp_path / "store").exists()


def test_workers_on_every_node_import_the_shipped_copy_of_the_code(ray_cluster):
    """With a cluster address the checkout travels as the runtime_env working_dir: each node imports msca from
    its own unpacked copy, so a real cluster needs no shared filesystem and no install of msca."""
    code = """
import json, ray
from omegaconf import OmegaConf
from msca.cluster.ray import worker_runtime_env
env = worker_runtime_env(OmegaConf.create({"address": "x", "runtime_env": {}, "forward_credentials": False}))
ray.init(address=ADDRESS, runtime_env=env, logging_level="ERROR")
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
@ray.remote(num_cpus=1)
def where():
    import socket, msca, jobs
    return socket.gethostname(), msca.__file__, jobs.__file__
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]  # one task pinned to each node (SPREAD may not spread)
pinned = [NodeAffinitySchedulingStrategy(node, soft=False) for node in nodes]
print(json.dumps(ray.get([where.options(scheduling_strategy=s).remote() for s in pinned])))
""".replace("ADDRESS", repr(f"ray://{ray_cluster.address.split(':')[0]}:10001"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {host for host, _, _ in found} == {"node1", "node2"}
    for _host, msca_file, jobs_file in found:
        assert "/runtime_resources/working_dir_files/_ray_pkg_" in msca_file and not msca_file.startswith(str(REPO))
        assert os.path.dirname(os.path.dirname(msca_file)) == os.path.dirname(os.path.dirname(jobs_file))


def test_which_errors_are_deterministic():
    from omegaconf.errors import ConfigKeyError

    from msca.runtime.errors import is_deterministic

    class CollectiveError(RuntimeError):
        pass

    assert is_deterministic(ValueError("batch")) and is_deterministic(ConfigKeyError("k"))
    assert is_deterministic(FileNotFoundError("data")) and is_deterministic(PermissionError("s3 auth"))
    assert is_deterministic(CollectiveError("loading failed on rank 1: ValueError: bad"))
    assert not is_deterministic(CollectiveError("loading failed on rank 1: RuntimeError: connection reset"))
    assert not is_deterministic(RuntimeError("gloo")) and not is_deterministic(ConnectionError())
    model = torch.nn.Linear(4, 2)
    with pytest.raises(RuntimeError) as incompatible:  # a checkpoint of another model shape
        model.load_state_dict(torch.nn.Linear(4, 3).state_dict())
    assert is_deterministic(incompatible.value)


def test_a_ray_run_resumes_with_fewer_workers_on_the_same_optimisation(ray_cluster, ray_s3, tmp_path):
    """Two workers (one per node) stop at step 4 of 6; relaunched with one worker, the run converts its checkpoint
    (said in its log), finishes every step once and its ledger shows 2 then 1 rank. (Ray forwards no ad-hoc env
    to its workers, so the per-clip audit is tests/test_reshard.py's and test_slurm.py's: same trainer.)"""
    bucket = ray_s3.make_bucket()
    root = f"s3://{bucket}/team"
    base = [o for o in small_overrides(tmp_path, tmp_path / "data", "fewer") if not o.startswith("store.root=")]
    base += [
        f"store.root={root}",
        f"store.endpoint_url={ray_s3.endpoint_url}",
        "cluster=ray",
        f"cluster.address={ray_cluster.address}",
        "cluster.max_failures=0",
        "deepspeed=zero2",
        "train.epochs=2",
        "train.val_every=0",
        "eval.at_end=false",
        "data.batch_size=2",
        "train.global_batch=8",  # 24 clips -> 3 steps per epoch at any world size
        "checkpoint.every_steps=2",
    ]
    env = {**ray_s3.env, "MSCA_CACHE": str(tmp_path / "cache")}
    part = launch_on_head(ray_cluster, base + ["cluster.num_workers=2", "train.max_steps=4"], env=env)
    assert part.returncode == 0, (part.stdout + part.stderr)[-5000:]
    rest = launch_on_head(ray_cluster, base + ["cluster.num_workers=1"], env=env)
    out = rest.stdout + rest.stderr
    assert rest.returncode == 0, out[-5000:]
    said = "resuming step 4 written by 2 ranks (ZeRO-2) on 1 ranks (ZeRO-2): converting (universal checkpoint)"
    assert said in out, out[-5000:]
    store = ray_s3.store(f"{root}/runs/fewer")
    assert train_steps(json.loads(line) for line in store.read_text("metrics.jsonl").splitlines()) == list(range(1, 7))
    assert [a.world_size for a in read_attempts(store)] == [2, 1]


def test_a_jobs_api_run_keeps_the_store_secret_out_of_rays_job_records(reference, ray_cluster, ray_s3):
    """A run in S3 submitted through the Jobs API with this shell's credentials set: the head's driver and the
    workers reach the store with their nodes' own credentials (a file the cluster's owner provisioned), and
    neither the dashboard's job list (`GET /api/jobs/`, no auth) nor `ray job list` holds the secret."""
    import urllib.request

    tmp, ref = reference
    bucket = ray_s3.make_bucket()
    root = f"s3://{bucket}/team"
    overrides = [o for o in small_overrides(tmp, tmp / "data", "nosecret") if not o.startswith("store.root=")]
    overrides += COMMON + [f"store.root={root}", f"store.endpoint_url={ray_s3.endpoint_url}"]
    proc = run_launch(overrides + jobs_api(ray_cluster, ["cluster.wait=false"]), env=ray_s3.env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = re.search(r"as job (raysubmit_\w+)", proc.stdout).group(1)
    info, logs = wait_job(ray_cluster, job_id)
    assert str(info.status) == "SUCCEEDED", logs[-5000:]
    store = ray_s3.store(f"{root}/runs/nosecret")
    assert_same_weights(ref, weights(store.read_bytes("model.pt")))

    with urllib.request.urlopen(f"{ray_cluster.jobs_address}/api/jobs/", timeout=30) as r:
        dashboard = r.read().decode()
    listed = subprocess.run(
        [str(REPO / ".venv" / "bin" / "ray"), "job", "list", "--address", ray_cluster.jobs_address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert job_id in dashboard and job_id in listed.stdout  # the records are there...
    for text in (dashboard, listed.stdout, listed.stderr, logs):
        assert ray_s3.secret_key not in text  # ...without the secret
    for key in store.list(""):  # nor does the store hold it (launch.json, config.yaml, attempts, logs)
        if not key.endswith((".pt", ".png")) and "/zero_pp_rank" not in key:
            assert ray_s3.secret_key not in store.read_bytes(key).decode(errors="replace"), key
