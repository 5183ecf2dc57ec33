"""What every job does first on every rank: logging, the process group, the run's home."""
from __future__ import annotations

from msca import dist
from msca.run_home import RunHome


class Job:
    """Stateless apart from the run URI: a requeued, retried or relaunched job simply runs again and picks
    up from the run home (resume is never a flag)."""

    def __init__(self, run_uri: str, endpoint_url: str | None = None):
        self.run_uri, self.endpoint_url = run_uri, endpoint_url

    def start(self) -> RunHome:
        dist.setup_logging()
        dist.init_distributed()
        return RunHome(self.run_uri, self.endpoint_url)
