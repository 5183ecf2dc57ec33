"""What every job does first on every rank: logging, the process group, the run's home."""

from __future__ import annotations

import logging
import os
import socket

from msca.runstate.home import RunHome
from msca.runtime import dist, preemption
from msca.runtime.precision import check_precision

log = logging.getLogger("jobs")


class Job:
    """Stateless apart from the run URI: a requeued, retried or relaunched job simply runs again and picks
    up from the run home (resume is never a flag)."""

    def __init__(self, run_uri: str, endpoint_url: str | None = None):
        self.run_uri, self.endpoint_url = run_uri, endpoint_url

    def start(self) -> RunHome:
        """Process setup, the same under every backend: where this rank sits (from the scheduler's variables,
        or a clear error), logging, stop-signal handlers (main thread, before anything heavy), process group."""
        if not dist.is_initialized():  # Ray Train made the group (and its variables) already
            dist.export_process_env()
        dist.setup_logging()
        preemption.install()
        dist.init_distributed()
        self.hosts = hosts = dist.all_gather_object(socket.gethostname())  # every rank's host, by rank
        log.info(
            "%d rank(s) on %s; rendezvous %s:%s",
            dist.world_size(),
            ", ".join(f"{h} (rank {r})" for r, h in enumerate(hosts)),
            os.environ.get("MASTER_ADDR", "-"),
            os.environ.get("MASTER_PORT", "-"),
        )  # ours, or Ray Train's (it made the group)
        return RunHome(self.run_uri, self.endpoint_url)

    @staticmethod
    def config(home: RunHome):
        """The run's config, refused before anything is written when this rank's devices cannot run its
        precision (the launcher checks only where the ranks run on its own machine)."""
        cfg = home.config()
        check_precision(cfg.deepspeed.precision, cfg.deepspeed.zero_stage)
        return cfg
