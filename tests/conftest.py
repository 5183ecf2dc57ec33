"""Shared test setup: keep torch single-threaded (CI has 2 cores) and temp files out of /tmp's root."""

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


# A real S3 server (SeaweedFS) for storage/data/checkpoint tests: `s3_server` (session) and `s3_env` (per test).
# A real two-node Ray (head on node1, worker node on node2; infra/ray/cluster.sh) and a SeaweedFS its nodes reach:
# `ray_cluster`, `ray_s3` (session).
from ray_cluster import ray_cluster, ray_s3
from s3_server import s3_env, s3_server

# A real two-node SLURM (ctl, node1, node2 in namespaces; infra/slurm/cluster.sh): `slurm_cluster` (session).
from slurm_cluster import slurm_cluster

# Markers from what a test needs, so `pytest -m "not slow and not s3 and not cluster"` is the fast loop.
S3_FIXTURES = {"s3_server", "s3_env", "ray_s3"}
CLUSTER_FIXTURES = {"slurm_cluster", "ray_cluster"}


def pytest_collection_modifyitems(items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        ids = item.callspec.id.split("-") if hasattr(item, "callspec") else []  # a store parametrized as "s3"
        if names & S3_FIXTURES or "s3" in ids:
            item.add_marker(pytest.mark.s3)
        if names & CLUSTER_FIXTURES:
            item.add_marker(pytest.mark.cluster)
