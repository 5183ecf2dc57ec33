"""What one attempt of a training job holds while it runs (rank 0 only): the run's lease and its ledger record.

session = RunSession.open(home, hosts, world_size)    # raises LeaseHeld if another live job has the run
...  session.ledger.restored(...), .first_step(), .committed(...)
session.close("finished" | "stopped" | "failed", error)
"""

from __future__ import annotations

import os
import socket

from msca.runstate.attempts import AttemptLedger
from msca.runstate.fence import FencedStore
from msca.runstate.home import RunHome
from msca.runstate.lease import Holder, Lease, LeaseHeld
from msca.runtime.host import slurm_cluster_name

LEASE_TTL_S = float(os.environ.get("MSCA_LEASE_TTL_S", "120"))


class RunSession:
    def __init__(self, lease: Lease, ledger: AttemptLedger):
        self.lease, self.ledger = lease, ledger

    @classmethod
    def open(cls, home: RunHome, hosts: list, world_size: int) -> "RunSession":
        ledger = AttemptLedger(home.store, hosts, world_size)
        a = ledger.attempt
        lease = Lease(
            home.store,
            Holder(
                job_key=a.job_key,
                attempt=a.id,
                host=socket.gethostname(),
                pid=os.getpid(),
                backend=a.backend,
                cluster=slurm_cluster_name() if a.job_key.startswith("slurm-") else "",
            ),
            ttl_s=LEASE_TTL_S,
            renew_s=max(1.0, LEASE_TTL_S / 6),
        )
        lease.acquire()  # before this attempt writes anything
        ledger.write()
        lease.start_renewing()
        return cls(lease, ledger)

    def check_lease(self) -> None:
        """Raise if another job took the run over (we stopped renewing, e.g. a long store outage)."""
        if self.lease.lost:
            raise LeaseHeld(f"{self.lease.lost}; this attempt stops without committing anything more")

    def fenced(self, home: RunHome) -> RunHome:
        """The run home as this attempt may write it: every write or delete first proves the lease is ours."""
        return home.with_store(FencedStore(home.store, self.lease.fence))

    def close(self, reason: str, error: str = "") -> None:
        try:
            self.ledger.end(reason, error)
        finally:
            self.lease.release()
