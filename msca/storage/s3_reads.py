"""The S3 read hot path (video frames, frame-pack spans) on obstore, a maintained client (Rust `object_store`
over reqwest/hyper): its GET costs ~0.2 CPU-ms against boto3's ~1.7 (`python -m msca.bench s3clients`), with no
protocol code of ours. boto3 keeps every other operation (writes, listings, conditional writes, big transfers).

What users expect from boto3 holds here too, because the settings come from boto3's own resolution:
  credentials  the boto3 session's chain (env, AWS_SESSION_TOKEN, AWS_PROFILE / AWS_SHARED_CREDENTIALS_FILE,
               SSO, container and instance roles), handed over through a provider that re-reads refreshable
               ones (botocore renews them ahead of expiry);
  endpoint     the store's (`endpoint_url=`, MSCA_S3_ENDPOINT, AWS_ENDPOINT_URL), http allowed when it says http;
  proxies      HTTPS_PROXY / HTTP_PROXY (by the endpoint's scheme) and NO_PROXY, read as Python's urllib does;
  CA bundle    AWS_CA_BUNDLE or the profile's ca_bundle, added to the trusted roots.
Processes: obstore runs one tokio runtime per process, which does not survive fork (a child of a process that
started it hangs on its first read). A process forked after its parent started it reads through boto3 instead
(correct, slower, one warning), and `worker_context()` tells DataLoaders to spawn workers then, so loader
workers -- the hot path -- start clean (with this process's environment, hence its credential chain) and use
obstore.
obstore retries transient failures (connection errors, timeouts, 5xx) with backoff until the store's per-operation
deadline; `S3Store` maps what is left to the same errors as its boto3 operations.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Optional, Tuple
from urllib.parse import urlsplit

from obstore.store import S3Store as ObjectStore

REFRESH = timedelta(minutes=5)  # how often obstore asks again for refreshable (temporary) credentials
log = logging.getLogger(__name__)
_started: Optional[int] = None  # pid of the process whose obstore runtime is running (None: not started)
_inherited = False  # this process was forked from one whose runtime was running: obstore would hang here
_warned = False


def _after_fork() -> None:
    global _inherited
    _inherited = _inherited or _started is not None


os.register_at_fork(after_in_child=_after_fork)


def usable() -> bool:
    """Whether obstore can run in this process (see the module docstring); warns once when it cannot."""
    global _warned
    if _inherited and not _warned:
        _warned = True
        log.warning(
            "process %d was forked after its parent started obstore (which cannot survive a fork): its S3 reads "
            "use boto3 (slower); start such processes with spawn (msca's DataLoaders do)",
            os.getpid(),
        )
    return not _inherited


def worker_context() -> Optional[str]:
    """The multiprocessing start method for loader workers: spawn once obstore runs here (a forkserver would
    hand workers the environment of its own start, stale credentials included), else the default (fork)."""
    return "spawn" if _started == os.getpid() else None


class BotoCredentials:
    """obstore `credential_provider` over a boto3 session's credentials."""

    def __init__(self, credentials):
        self.credentials = credentials
        self.refreshable = hasattr(credentials, "refresh_needed")  # botocore RefreshableCredentials

    def __call__(self) -> dict:
        f = self.credentials.get_frozen_credentials()  # refreshes temporary credentials when they near expiry
        expires = datetime.now(timezone.utc) + REFRESH if self.refreshable else None
        return {
            "access_key_id": f.access_key,
            "secret_access_key": f.secret_key,
            "token": f.token,
            "expires_at": expires,
        }


def proxy_for(url: str) -> Tuple[Optional[str], str]:
    """(proxy, NO_PROXY list) a request to `url` should use by the standard env vars (proxy None: direct)."""
    host = urlsplit(url).hostname or ""
    proxies = urllib.request.getproxies_environment()
    if urllib.request.proxy_bypass_environment(host, proxies):
        return None, ""
    return proxies.get(urlsplit(url).scheme), proxies.get("no", "")


def open_objects(
    session,
    region: str,
    bucket: str,
    endpoint_url: Optional[str],
    addressing_style: str,
    retry_s: float,
    read_timeout: float,
) -> ObjectStore:
    """An obstore S3 store for `bucket` (keys are full object keys); raises botocore's NoCredentialsError when
    the chain has none, as boto3 would."""
    global _started
    credentials = session.get_credentials()
    if credentials is None:
        import botocore.exceptions

        raise botocore.exceptions.NoCredentialsError()
    virtual = addressing_style == "virtual" or (
        addressing_style == "auto" and not endpoint_url and re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", bucket)
    )
    config: dict = {"region": region, "virtual_hosted_style_request": bool(virtual)}
    url = f"https://s3.{region}.amazonaws.com"
    if endpoint_url:
        u = urlsplit(endpoint_url)
        url = f"{u.scheme}://{bucket}.{u.netloc}{u.path}" if virtual else endpoint_url  # virtual: bucket in host
        config["endpoint"] = url
    options: dict = {
        "allow_http": url.startswith("http://"),
        "connect_timeout": "5s",
        "read_timeout": timedelta(seconds=read_timeout),  # a silent server is noticed within this (and retried)
        "timeout": "1h",  # a whole request (default 30 s) would cut big objects; the read timeout bounds stalls
    }
    proxy, excludes = proxy_for(url)
    if proxy:
        options["proxy_url"] = proxy
        if excludes:
            options["proxy_excludes"] = excludes
    ca_bundle = session._session.get_config_variable("ca_bundle")  # AWS_CA_BUNDLE or the profile's ca_bundle
    if ca_bundle:
        with open(ca_bundle, "rb") as f:
            options["root_certificate"] = f.read()
    retry = {
        "max_retries": 1_000_000,  # the deadline bounds retries, as for every other S3 operation
        "retry_timeout": timedelta(seconds=retry_s),
        "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=5), "base": 2},
    }
    _started = os.getpid()  # from its first request on; being conservative costs nothing
    return ObjectStore(
        bucket,
        config=config,
        client_options=options,
        retry_config=retry,
        credential_provider=BotoCredentials(credentials),
    )


def http_status(e: Exception) -> Optional[int]:
    """The HTTP status an obstore error reports, None when no server answered (connection error, timeout)."""
    m = re.search(r"non-2xx status code: (\d{3})", str(e))
    return int(m.group(1)) if m else None


def s3_code(e: Exception) -> str:
    """The S3 error code and message in an obstore error's response body, e.g. 'NoSuchKey: The specified...'."""
    code = re.search(r"<Code>([^<]*)</Code>", str(e))
    msg = re.search(r"<Message>([^<]*)</Message>", str(e))
    return f"{code.group(1) if code else ''}: {msg.group(1) if msg else ''}" if code else ""
