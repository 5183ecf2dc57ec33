"""The runtime_env pieces both Ray modes share: the user's `cluster.runtime_env`, the variables forwarded from
this shell, and the runtime_env of the Jobs API job this process may run in."""

from __future__ import annotations

import json
import os

from omegaconf import DictConfig, OmegaConf

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for a Jobs API entrypoint: the job's runtime_env


FORWARDED = (
    "MSCA_S3_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_SESSION_TOKEN",
    "MSCA_COLLECTIVE_TIMEOUT_S",
    "MSCA_LEASE_TTL_S",
)


def user_runtime_env(cluster) -> dict:
    """cluster.runtime_env as plain containers (Ray serialises it)."""
    env = cluster.runtime_env
    return OmegaConf.to_container(env, resolve=True) if isinstance(env, DictConfig) else dict(env or {})


def forwarded_env_vars(env_vars) -> dict:
    """The user's env_vars plus this shell's store credentials and msca timeouts, unless set there."""
    out = {str(k): str(v) for k, v in dict(env_vars or {}).items()}
    for key in FORWARDED:
        if os.environ.get(key) and key not in out:
            out[key] = os.environ[key]
    return out


def job_runtime_env() -> dict:
    """The runtime_env of the Jobs API job this process runs in ({} outside one)."""
    raw = os.environ.get(JOB_CONFIG_ENV)
    return (json.loads(raw).get("runtime_env") or {}) if raw else {}


def masked(env_vars: dict) -> dict:
    """env_vars as a dry run shows them: a secret's value replaced by "<set>"."""
    return {k: ("<set>" if "SECRET" in k or "TOKEN" in k else v) for k, v in (env_vars or {}).items()}
