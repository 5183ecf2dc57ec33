"""The runtime_env pieces both Ray modes share: the user's `cluster.runtime_env`, the variables forwarded from
this shell, and the runtime_env of the Jobs API job this process may run in."""

from __future__ import annotations

import json
import logging
import os

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for a Jobs API entrypoint: the job's runtime_env


FORWARDED = ("MSCA_S3_ENDPOINT", "AWS_DEFAULT_REGION", "MSCA_COLLECTIVE_TIMEOUT_S", "MSCA_LEASE_TTL_S")

# Never forwarded by default: Ray keeps a job's runtime_env in its job and actor records, which the dashboard,
# `GET /api/jobs/` and `ray job list` show to anyone who can reach the head, unauthenticated; a copied session
# token also expires mid-run and overrides the nodes' own (refreshed) role credentials. Workers use their nodes'
# own credential chain (role, AWS_SHARED_CREDENTIALS_FILE, ...); `cluster.forward_credentials=true` is the
# explicit opt-in for a cluster that has none.
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def user_runtime_env(cluster) -> dict:
    """cluster.runtime_env as plain containers (Ray serialises it)."""
    env = cluster.runtime_env
    return OmegaConf.to_container(env, resolve=True) if isinstance(env, DictConfig) else dict(env or {})


def forwarded_env_vars(env_vars, credentials: bool = False) -> dict:
    """The user's env_vars plus this shell's store endpoint and msca timeouts, unless set there; this shell's
    store credentials too only with `credentials` (cluster.forward_credentials: they end up in Ray's records)."""
    out = {str(k): str(v) for k, v in dict(env_vars or {}).items()}
    for key in FORWARDED + (CREDENTIALS if credentials else ()):
        if os.environ.get(key) and key not in out:
            out[key] = os.environ[key]
    if credentials and any(k in out for k in CREDENTIALS):
        log.warning(
            "cluster.forward_credentials=true: this shell's AWS credentials go into the job's runtime_env, which Ray "
            "keeps in its job records (dashboard, `ray job list`); prefer the nodes' own credentials"
        )
    return out


def job_runtime_env() -> dict:
    """The runtime_env of the Jobs API job this process runs in ({} outside one)."""
    raw = os.environ.get(JOB_CONFIG_ENV)
    return (json.loads(raw).get("runtime_env") or {}) if raw else {}


def masked(env_vars: dict) -> dict:
    """env_vars as a dry run shows them: a secret's value replaced by "<set>"."""
    return {k: ("<set>" if "SECRET" in k or "TOKEN" in k else v) for k, v in (env_vars or {}).items()}
