"""What `launch.py` does once Hydra has composed the config: validate it, write the run's home, submit the
job to the chosen backend, and say where the run lives. Comparisons (run.variants) launch one run per
model preset and print a table."""

from __future__ import annotations

import datetime
import getpass
import json
import os
import signal
import socket
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from msca.cluster import JobSpec, get_backend
from msca.config import absolutize, identity, validate
from msca.data import check_data
from msca.report.tables import comparison_table, load_results
from msca.runstate.checkpoint import CheckpointManager
from msca.runstate.home import RunHome, run_uri
from msca.runstate.lease import live_holder
from msca.runstate.session import LEASE_TTL_S
from msca.runtime.errors import EXIT_KILLED, EXIT_STOPPED
from msca.runtime.host import git_sha
from msca.runtime.precision import check_precision
from msca.storage import is_remote


class ConfigMismatch(ValueError):
    """An existing run name was launched with a config that would compute something else."""


class RunIsRunning(ValueError):
    """Another job holds the run's lease."""


def config_diff(old: DictConfig, new: DictConfig) -> list[str]:
    a, b = identity(old), identity(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def has_trained(home: RunHome) -> bool:
    """A committed checkpoint, final weights or results exist: the config that produced them is locked. A run
    that never committed a step (e.g. its first launch failed at start-up) can be relaunched corrected."""
    if home.store.exists("model.pt") or home.store.exists("results.json"):
        return True
    return bool(CheckpointManager(None, home).committed_steps())


def splits_for(cfg: DictConfig) -> list[str]:
    """The data splits the job will read."""
    if cfg.run.job == "evaluate":
        return ["test"]
    return ["train"] + (["val"] if cfg.train.val_every else []) + (["test"] if cfg.eval.at_end else [])


def prepare_home(cfg: DictConfig, overrides: list[str]) -> RunHome:
    """Write config.yaml (or check it matches the existing run) and append to launch.json."""
    home = RunHome(run_uri(cfg.store.root, cfg.run.name), cfg.store.endpoint_url)
    resuming = home.exists()
    if resuming:
        diff = config_diff(home.config(), cfg)
        if diff and not has_trained(home):
            print(f"run {cfg.run.name} never committed a step: its config is replaced ({'; '.join(diff)})")
        elif diff and not cfg.run.allow_config_change:
            raise ConfigMismatch(
                f"run {cfg.run.name!r} exists at {home.uri} with a different config:\n  "
                + "\n  ".join(diff)
                + "\nRepeat the overrides it was launched with (see its launch.json), pick a new run.name, "
                "or pass run.allow_config_change=true to continue it with the new config."
            )
    home.write_config(cfg)
    launches = json.loads(home.store.read_text("launch.json")) if home.store.exists("launch.json") else []
    launches.append(
        {
            "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "overrides": overrides,
            "backend": cfg.cluster.backend,
            "job": cfg.run.job,
            "resumed": resuming,
            "git_sha": git_sha(),
            "user": getpass.getuser(),
            "host": socket.gethostname(),
            **({"submitted_from": os.environ["MSCA_SUBMITTED_FROM"]} if os.environ.get("MSCA_SUBMITTED_FROM") else {}),
        }
    )
    home.store.write_text("launch.json", json.dumps(launches, indent=2))
    return home


def refuse_if_running(cfg: DictConfig) -> None:
    """A second launch of a run whose job is alive would make two writers: refuse it, naming the holder. Alive
    is what `live_holder` proves (its process here, or its lease changing while we watch), never a comparison
    of its timestamp with our clock; the age it reports is for people only."""
    home = RunHome(run_uri(cfg.store.root, cfg.run.name), cfg.store.endpoint_url)
    holder = live_holder(home.store, LEASE_TTL_S)
    if holder is not None:
        raise RunIsRunning(
            f"run {cfg.run.name!r} is running: {holder.describe()}, lease {holder.renewed_ago()}. Wait for it "
            f"to end or stop it; a relaunch of the same run.name then resumes it"
        )


def launch_one(cfg: DictConfig, overrides: list[str], make_callable=None) -> int:
    backend = get_backend(cfg.cluster.backend)
    if backend.launches_remotely(cfg.cluster):
        validate(cfg)
        if cfg.cluster.dry_run:
            print(backend.dry_run_launch(cfg, overrides))
            return 0
        return backend.submit_launch(cfg, overrides)  # launch.py runs on the cluster, where its paths resolve
    backend.check_paths(cfg)  # before relative paths are taken as relative to here
    absolutize(cfg)
    validate(cfg)
    if backend.ranks_run_here(cfg.cluster):  # elsewhere each rank checks its own devices at start
        check_precision(cfg.deepspeed.precision, cfg.deepspeed.zero_stage)
    uri = run_uri(cfg.store.root, cfg.run.name)
    spec = JobSpec(
        job=cfg.run.job,
        run_uri=uri,
        endpoint_url=cfg.store.endpoint_url,
        log_dir=str(Path(uri) / "logs") if not is_remote(uri) else "",
        make_callable=make_callable,
    )
    if cfg.cluster.dry_run:  # nothing written, nothing submitted
        print(backend.dry_run(spec, cfg.cluster))
        return 0
    refuse_if_running(cfg)
    if cfg.run.check_data:
        check_data(cfg.data, splits_for(cfg))  # nothing is written before the run can start
    backend.check(spec, cfg.cluster)  # the scheduler's objections before anything is written
    local = RunHome(uri, cfg.store.endpoint_url).local_dir  # a private scratch of ours, checked before writing
    home = prepare_home(cfg, overrides)
    print(f"run {cfg.run.name}: {home.uri}")
    spec.log_dir = str(local / "logs")
    handle = backend.submit(spec, cfg.cluster)
    print(f"{handle.backend}: {handle.description}")
    if handle.returncode is None:
        print(
            handle.follow
            or f"follow it: tail -f {spec.log_dir}/rank0.log (metrics: "
            f"{home.store.url('metrics.jsonl')}); once it has stopped, the same command with "
            f"run.name={cfg.run.name} resumes it"
        )
        return 0
    if handle.returncode == EXIT_STOPPED:
        print(
            f"run {cfg.run.name} stopped; the same command (run.name={cfg.run.name}) resumes it from its "
            f"newest committed checkpoint"
        )
        return handle.returncode
    if handle.returncode == EXIT_KILLED:
        print(
            f"run {cfg.run.name} was killed: its ranks did not stop within the grace period, so no stop "
            f"checkpoint was committed; the same command resumes it from {newest_commit(home)}"
        )
        return handle.returncode
    if handle.returncode:
        print(
            f"run {cfg.run.name} failed (exit {handle.returncode})"
            + (f": {handle.error}" if handle.error else "")
            + f"\nlogs: {spec.log_dir}. Fix the cause; the same command then resumes it from {newest_commit(home)}"
        )
        return handle.returncode
    results = load_results(home)
    if results:
        print(
            f"test top-1 {100 * results['top1']:.2f}%  top-5 {100 * results['top5']:.2f}%  "
            f"({results['num_videos']} videos, {results['views']} views) -> {home.store.url('results.json')}"
        )
    return 0


def newest_commit(home: RunHome) -> str:
    try:
        steps = CheckpointManager(None, home).committed_steps()
    except OSError:
        return "its newest committed checkpoint"
    return f"step {steps[-1]}, its newest committed checkpoint" if steps else "the start (nothing was committed)"


def launch_variants(cfg: DictConfig, overrides: list[str], compose, make_callable=None) -> int:
    """One run per model preset, same everything else; a comparison table when they finish here."""
    base, homes, code = cfg.run.name, [], 0
    for variant in cfg.run.variants:
        extra = [f"model={variant}", f"run.name={base}-{variant}", "run.variants=[]"]
        sub = compose([o for o in overrides if not o.startswith(("model=", "run.name="))] + extra)
        code = launch_one(sub, overrides + extra, make_callable) or code
        homes.append(RunHome(run_uri(sub.store.root, sub.run.name), sub.store.endpoint_url))
        if code == EXIT_STOPPED:  # Ctrl-C stops the comparison, not just this variant
            return code
    waited = cfg.cluster.foreground if cfg.cluster.backend == "local" else cfg.cluster.wait
    if waited:
        print(comparison_table(homes))
    else:
        print("when they finish: python -m msca.report " + " ".join(h.uri for h in homes))
    return code


def foreign_cluster_key(overrides: list[str], compose) -> str | None:
    """One line for a `cluster.<key>` override that the selected backend's schema lacks but another backend's
    has (Hydra alone says "Key 'num_workers' not in 'LocalCluster'" over several lines); None otherwise."""
    from msca.cluster.schema import foreign_key_error

    selections = [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0]]
    try:
        backend = compose(selections).cluster.backend
    except Exception:  # noqa: BLE001 - the selections themselves fail: Hydra reports that well
        return None
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("cluster.") and key.count(".") == 1:
            error = foreign_key_error(backend, key.split(".", 1)[1])
            if error:
                return error
    return None


def unset_section(overrides: list[str], compose) -> str | None:
    """Which override reaches into a section that the selected group option leaves unset (data=k400 with
    data.synthetic.classes=3: k400 has no `synthetic`), as one line naming the key and the group; None if none
    does. Hydra itself only asserts ("Unexpected type for root: NoneType") with a traceback."""
    selections = [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0]]
    try:
        base = compose(selections, return_hydra_config=True)
    except Exception:  # noqa: BLE001 - the selections themselves fail: Hydra reports that well
        return None
    choices = base.hydra.runtime.choices
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        parts = key.split(".")
        for i in range(1, len(parts)):
            section = ".".join(parts[:i])
            if OmegaConf.select(base, section, default="<absent>") is None:
                group = parts[0]
                return (
                    f"{key}: {group}={choices.get(group, '?')} leaves {section} unset, so it cannot be "
                    f"overridden; drop this override or select a {group} option that sets {section}"
                )
    return None


def launch(cfg: DictConfig, overrides: list[str], compose, jobs: dict | None = None) -> int:
    """`jobs`: jobs.JOBS (launch.py passes it; msca never imports jobs/), for backends that pickle the job."""
    # Ctrl-C always means "stop with a checkpoint", even when a parent started us with SIGINT ignored (a shell
    # runs background commands that way); the backends turn the KeyboardInterrupt into a collective stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    validate(cfg)  # before anything is written or started
    make_callable = jobs.get(cfg.run.job) if jobs else None
    if cfg.run.variants:
        return launch_variants(cfg, overrides, compose, make_callable)
    return launch_one(cfg, overrides, make_callable)
