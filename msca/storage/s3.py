"""`S3Store`: `s3://bucket/prefix` on any S3-compatible endpoint; with `msca.storage.base`, the project's only
importer of boto3.

Everything that persists (frames, list files, run homes, checkpoints) goes through a `Store` rooted at a URI,
with '/'-separated keys relative to that root, so the same code runs against a shared filesystem or any
S3-compatible server. S3 settings follow the standard boto3 chain (env, ~/.aws, instance roles); only the
endpoint has a project-level override (`endpoint_url=`, else `MSCA_S3_ENDPOINT`, else `AWS_ENDPOINT_URL`).

Processes: a `Store` is picklable and fork-safe. The boto3 client and the thread pool are created lazily per
process (a DataLoader worker forked from a parent that already used the store builds its own), because
neither urllib3 connection pools nor executor threads survive a fork. obstore cannot run at all in a process
forked after its parent ran it: such a process reads through boto3 (`s3_reads.usable`).

Reads of objects (video frames, frame-pack spans) go through obstore, a maintained client that costs ~0.2 CPU-ms
per GET where boto3 costs ~1.7, as much as decoding the frame; credentials, region, CA bundle and proxies come
from the same chain as boto3's (`msca.storage.s3_reads`). Everything else is boto3.
"""

import contextlib
import io
import logging
import os
import threading
import time
import uuid
from typing import Optional, Tuple

import boto3
import botocore.exceptions
import obstore
import obstore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from msca.storage import s3_reads
from msca.storage.base import (
    BucketNotFoundError,
    ConditionalWritesUnsupported,
    Store,
    StoreAuthError,
    atomic_copy,
    clean_key,
)
from msca.storage.s3_reads import http_status, open_objects, s3_code

log = logging.getLogger(__name__)

ENDPOINT_ENV_VARS = ("MSCA_S3_ENDPOINT", "AWS_ENDPOINT_URL")
_CRED_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for this server, and "
    "MSCA_S3_ENDPOINT (or AWS_ENDPOINT_URL) for an S3-compatible endpoint"
)
_AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "403",
    "Forbidden",
    "AuthorizationHeaderMalformed",
    "InvalidSecurity",
}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_BIG = 64 * 1024 * 1024  # above this, whole-object reads/writes go through ranged/multipart transfers
# Riding through outages: every S3 operation retries transient failures (refused or dropped connections,
# timeouts, 5xx, throttling) with backoff until its own deadline, then fails with one line naming the endpoint.
# Per operation, not a shared quota: a burst of 64 concurrent frame reads during a restart cannot exhaust it.
RETRY_S = float(os.environ.get("MSCA_S3_RETRY_S", "60"))
_TRANSIENT_CODES = {
    "500",
    "502",
    "503",
    "504",
    "InternalError",
    "SlowDown",
    "ServiceUnavailable",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestTimeTooSkewed",
}


class _S3Conn:
    """Connection settings plus a lazily built, per-process boto3 client (shared by a store and its children)."""

    def __init__(self, endpoint_url: Optional[str], options: dict):
        opts = dict(options)
        self.endpoint_url = endpoint_url or next((os.environ[v] for v in ENDPOINT_ENV_VARS if os.environ.get(v)), None)
        self.session_kwargs = {
            k: opts.pop(k)
            for k in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "profile_name")
            if k in opts
        }
        self.region_name = opts.pop("region_name", None)
        self.max_attempts = int(opts.pop("max_attempts", 8))
        self.max_pool_connections = int(opts.pop("max_pool_connections", 64))
        self.addressing_style = opts.pop("addressing_style", "path" if self.endpoint_url else "auto")
        self.transfer_concurrency = int(opts.pop("transfer_concurrency", 8))
        self.retry_s = float(opts.pop("retry_s", RETRY_S))  # per-operation deadline for transient errors
        self.read_timeout = float(opts.pop("read_timeout", 20))  # a silent server is noticed within this
        if opts:
            raise TypeError(f"unknown S3 options: {sorted(opts)}")
        self._client = None
        self._pid = None
        self._lock = threading.Lock()
        self._session = None
        self.region = None
        self._objects: dict = {}
        self._objects_pid = None
        self.checked_buckets: set = set()
        self.conditional_ok: set = set()  # buckets whose conditional writes were probed and work

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_client=None, _pid=None, _lock=None, _session=None, _objects={}, _objects_pid=None)
        state.update(checked_buckets=set(), conditional_ok=set())
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return self.endpoint_url or "the default AWS endpoint"

    def client(self):
        if self._client is None or self._pid != os.getpid():
            if self._pid != os.getpid():
                self._lock = threading.Lock()  # a lock copied mid-acquire by fork would deadlock
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    session = boto3.session.Session(**self.session_kwargs)
                    region = self.region_name or session.region_name or "us-east-1"
                    self._session, self.region = session, region
                    # botocore's own retries are off: `S3Store._call` retries each operation up to its deadline
                    cfg = Config(
                        retries={"total_max_attempts": 1, "mode": "standard"},
                        max_pool_connections=self.max_pool_connections,
                        s3={"addressing_style": self.addressing_style},
                        connect_timeout=5,
                        read_timeout=self.read_timeout,
                    )
                    self._client = session.client("s3", endpoint_url=self.endpoint_url, region_name=region, config=cfg)
                    self._pid = os.getpid()
        return self._client

    def transfer_config(self) -> TransferConfig:
        return TransferConfig(
            multipart_threshold=16 * 1024 * 1024,
            multipart_chunksize=16 * 1024 * 1024,
            max_concurrency=self.transfer_concurrency,
            use_threads=True,
        )

    def objects(self, bucket: str):
        """This process's obstore store for `bucket`, the read hot path (see `msca.storage.s3_reads`); built
        after a fork or unpickling like the boto3 client, since its connections and runtime stay in one process."""
        self.client()  # resolves the session and region for this process
        stores = self._objects if self._objects_pid == os.getpid() else {}
        ob = stores.get(bucket)
        if ob is None:
            ob = open_objects(
                self._session,
                self.region,
                bucket,
                self.endpoint_url,
                self.addressing_style,
                self.retry_s,
                self.read_timeout,
            )
            self._objects, self._objects_pid = {**stores, bucket: ob}, os.getpid()
        return ob


def _transient(e: Exception) -> bool:
    """Worth retrying: the server was unreachable, slow, overloaded or failing -- not a 'no' (auth, missing)."""
    if isinstance(
        e,
        (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError,
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ResponseStreamingError,
            boto3.exceptions.RetriesExceededError,
        ),
    ):
        return True
    if isinstance(e, boto3.exceptions.S3UploadFailedError):  # wraps the part's error as text
        return not any(
            c in str(e) for c in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket")
        )
    if isinstance(e, botocore.exceptions.ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in _TRANSIENT_CODES or (status >= 500 and status != 501)  # 501: "not implemented", for good
    return isinstance(e, botocore.exceptions.HTTPClientError)


def _short(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


class S3Store(Store):
    """`s3://bucket/prefix` on AWS or any S3-compatible server (SeaweedFS, MinIO, Ceph RGW)."""

    def __init__(self, bucket: str, prefix: str, conn: _S3Conn):
        self.bucket, self.prefix, self.conn = bucket, prefix, conn
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"

    def _key(self, key: str) -> str:
        key = clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix and key else (self.prefix or key)

    def child(self, key: str) -> "S3Store":
        return S3Store(self.bucket, self._key(key), self.conn)

    def url(self, key: str = "") -> str:
        k = self._key(key)
        return f"s3://{self.bucket}/{k}" if k else f"s3://{self.bucket}"

    # --- error mapping: name the object, the endpoint and what to set -----------------------------------------
    def _error(self, e: Exception, key: str, missing_ok: bool = False):
        """Translate a botocore error into FileNotFoundError / StoreAuthError / BucketNotFoundError."""
        what = self.url(key) if key is not None else self.uri
        where = f"{what} on {self.conn.where}"
        if isinstance(e, botocore.exceptions.NoCredentialsError):
            return StoreAuthError(f"no S3 credentials found for {where}: {_CRED_HINT}")
        if isinstance(e, botocore.exceptions.EndpointConnectionError):
            return ConnectionError(
                f"cannot reach the S3 endpoint for {where} ({e}); is the server running? "
                f"Set MSCA_S3_ENDPOINT (or AWS_ENDPOINT_URL) to its URL"
            )
        if not isinstance(e, botocore.exceptions.ClientError):
            return e
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return BucketNotFoundError(
                f"bucket {self.bucket!r} does not exist on {self.conn.where} "
                f"(while accessing {what}); create it or fix the URI"
            )
        if code in _AUTH_CODES or status == 403:
            return StoreAuthError(
                f"S3 refused our credentials for bucket {self.bucket!r} on {self.conn.where} "
                f"({code or status}: {err.get('Message', '')}); {_CRED_HINT}"
            )
        if code in _MISSING_CODES or status == 404:
            if key is not None:
                self._check_bucket()
            return FileNotFoundError(f"{what}: no such object on {self.conn.where}")
        return e

    def _check_bucket(self) -> None:
        """A HEAD 404 does not say whether the key or the bucket is missing: ask once per bucket."""
        if self.bucket in self.conn.checked_buckets:
            return
        try:
            self.conn.client().head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise BucketNotFoundError(
                    f"bucket {self.bucket!r} does not exist on {self.conn.where}; create it or fix the URI"
                ) from None
            raise self._error(e, None) from None
        self.conn.checked_buckets.add(self.bucket)

    def _call(self, fn, key, _started: Optional[float] = None, **kw):
        """One S3 operation, retried on transient failures with backoff until `retry_s` after it started
        (`_started`: when the operation began, if something was tried before boto3)."""
        deadline, delay, warned = (_started or time.monotonic()) + self.conn.retry_s, 0.5, False
        while True:
            try:
                return fn(**kw)
            except (
                botocore.exceptions.ClientError,
                botocore.exceptions.BotoCoreError,
                boto3.exceptions.S3UploadFailedError,
                boto3.exceptions.RetriesExceededError,
            ) as e:
                left = deadline - time.monotonic()
                if not _transient(e) or left <= 0:
                    if _transient(e):
                        raise ConnectionError(
                            f"the S3 endpoint {self.conn.where} did not answer {self.url(key or '')} for "
                            f"{self.conn.retry_s:.0f}s ({_short(e)}); is the server up and reachable? "
                            f"(MSCA_S3_RETRY_S sets how long to wait)"
                        ) from None
                    raise self._error(e, key) from e
                if not warned:
                    log.warning("S3 endpoint %s: %s; retrying for up to %.0fs", self.conn.where, _short(e), left)
                    warned = True
                time.sleep(min(delay, max(0.0, left)))
                delay = min(2 * delay, 5.0)

    # --- primitives ---------------------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        try:
            self.size(key)
            return True
        except FileNotFoundError:
            return False

    def size(self, key: str) -> int:
        c = self.conn.client()
        return self._call(c.head_object, key, Bucket=self.bucket, Key=self._key(key))["ContentLength"]

    def _objects(self):
        try:
            return self.conn.objects(self.bucket)
        except botocore.exceptions.BotoCoreError as e:  # no credentials in the chain, a broken profile
            raise self._error(e, None) from None

    def _read_error(self, e: Exception, key: str) -> Exception:
        """An obstore error left after its retries, as the same error a boto3 operation gives."""
        what = self.url(key)
        if isinstance(e, FileNotFoundError):  # obstore's NotFoundError
            if "NoSuchBucket" in str(e):
                return BucketNotFoundError(
                    f"bucket {self.bucket!r} does not exist on {self.conn.where} "
                    f"(while accessing {what}); create it or fix the URI"
                )
            return FileNotFoundError(f"{what}: no such object on {self.conn.where}")
        status = http_status(e)
        if isinstance(e, (obstore.exceptions.PermissionDeniedError, obstore.exceptions.UnauthenticatedError)) or (
            status in (401, 403)
        ):
            return StoreAuthError(
                f"S3 refused our credentials for bucket {self.bucket!r} on {self.conn.where} "
                f"({s3_code(e) or status}); {_CRED_HINT}"
            )
        if status is None or status >= 500 or status == 429:  # still failing at the deadline
            return ConnectionError(
                f"the S3 endpoint {self.conn.where} did not answer {what} for {self.conn.retry_s:.0f}s "
                f"({str(e).splitlines()[0][:200]}); is the server up and reachable? (MSCA_S3_RETRY_S sets how "
                f"long to wait; HTTPS_PROXY/HTTP_PROXY/NO_PROXY choose the route)"
            )
        return OSError(f"S3 GET of {what} on {self.conn.where} failed: HTTP {status} {s3_code(e)}")

    def _boto_read(self, key: str, **kw) -> bytes:
        """A GET through boto3: where obstore cannot run (a process forked after its parent started it)."""
        resp = self._call(self.conn.client().get_object, key, Bucket=self.bucket, Key=self._key(key), **kw)
        try:
            return resp["Body"].read()
        finally:
            resp["Body"].close()

    def read_bytes(self, key: str) -> bytes:
        if not s3_reads.usable():
            return self._boto_read(key)
        try:
            res = obstore.get(self._objects(), self._key(key))
            if res.meta["size"] <= _BIG:
                return bytes(res.bytes())
        except (obstore.exceptions.BaseError, FileNotFoundError) as e:  # obstore raises the builtin for a 404
            raise self._read_error(e, key) from None
        buf = io.BytesIO()  # big objects (checkpoints): boto3's parallel ranged GETs
        self._call(
            self.conn.client().download_fileobj,
            key,
            Bucket=self.bucket,
            Key=self._key(key),
            Fileobj=buf,
            Config=self.conn.transfer_config(),
        )
        return buf.getvalue()

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """One ranged GET: a frame pack's span; fewer bytes past the object's end."""
        if end <= start:
            return b""
        if not s3_reads.usable():
            try:
                return self._boto_read(key, Range=f"bytes={start}-{end - 1}")[: end - start]
            except botocore.exceptions.ClientError as e:
                if str(e.response.get("Error", {}).get("Code", "")) == "InvalidRange":
                    return b""
                raise
        try:
            return bytes(obstore.get_range(self._objects(), self._key(key), start=start, end=end))
        except (obstore.exceptions.BaseError, FileNotFoundError) as e:
            if http_status(e) == 416:  # starts at or past the end
                return b""
            raise self._read_error(e, key) from None

    def read_ranges(self, key: str, spans) -> list:
        """Several ranges of one object from one call: obstore fetches them concurrently."""
        spans = [(a, b) for a, b in spans]
        if not s3_reads.usable() or len(spans) < 2 or any(b <= a for a, b in spans):
            return super().read_ranges(key, spans)
        starts, ends = [a for a, _ in spans], [b for _, b in spans]
        try:
            parts = obstore.get_ranges(self._objects(), self._key(key), starts=starts, ends=ends, coalesce=0)
        except (obstore.exceptions.BaseError, FileNotFoundError) as e:
            if http_status(e) == 416:  # a range past the object's end: each alone says how much there is
                return super().read_ranges(key, spans)
            raise self._read_error(e, key) from None
        return [bytes(p) for p in parts]

    def write_bytes(self, key: str, data: bytes) -> None:
        c = self.conn.client()
        if len(data) > _BIG:
            self._call(
                c.upload_fileobj,
                key,
                Fileobj=io.BytesIO(data),
                Bucket=self.bucket,
                Key=self._key(key),
                Config=self.conn.transfer_config(),
            )
        else:
            self._call(c.put_object, key, Bucket=self.bucket, Key=self._key(key), Body=data)

    def list(self, prefix: str = "") -> list:
        p = self._key(prefix)
        s3_prefix = f"{p}/" if p else ""
        strip = len(f"{self.prefix}/") if self.prefix else 0

        def list_all() -> list:  # retried whole: a listing interrupted half-way starts again
            pages = self.conn.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=s3_prefix)
            return [o["Key"][strip:] for page in pages for o in page.get("Contents", ())]

        return sorted(self._call(list_all, prefix))

    def delete(self, key: str) -> None:
        c = self.conn.client()
        try:
            self._call(c.delete_object, key, Bucket=self.bucket, Key=self._key(key))
        except FileNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        c = self.conn.client()
        for i in range(0, len(keys), 1000):
            objs = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            resp = self._call(c.delete_objects, prefix, Bucket=self.bucket, Delete={"Objects": objs, "Quiet": True})
            if resp.get("Errors"):  # the request succeeded, some keys did not: say which
                e = resp["Errors"][0]
                raise OSError(
                    f"could not delete {len(resp['Errors'])} object(s) under {self.url(prefix)}, e.g. "
                    f"{e.get('Key')}: {e.get('Code')} {e.get('Message', '')}"
                )
        return len(keys)

    def read_versioned(self, key: str) -> Tuple[bytes, str]:
        c = self.conn.client()
        resp = self._call(c.get_object, key, Bucket=self.bucket, Key=self._key(key))
        try:
            return resp["Body"].read(), resp["ETag"]
        finally:
            resp["Body"].close()

    def _put_conditional(self, key: str, data: bytes, **condition) -> bool:
        """PUT with If-None-Match / If-Match; False when the server says the condition failed (412/409)."""
        c = self.conn.client()
        try:
            self._call(c.put_object, key, Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
            return True
        except botocore.exceptions.ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(e.response.get("Error", {}).get("Code", ""))
            if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise

    def write_if_absent(self, key: str, data: bytes) -> bool:
        return self._put_conditional(key, data, IfNoneMatch="*")

    def check_conditional_writes(self) -> None:
        """Probe once per bucket and process, on a scratch object under this store: a second create must be
        refused (If-None-Match) and so must a swap against a stale version (If-Match). Some S3-compatible
        servers ignore both, or answer 501; then two jobs could both take one run's lease."""
        if self.bucket in self.conn.conditional_ok:
            return
        key = f".msca-probe-{uuid.uuid4().hex[:12]}"
        what = f"the S3 endpoint {self.conn.where} (bucket {self.bucket!r})"
        fix = (
            "it cannot guarantee one writer per run: use a store that supports conditional writes (AWS S3, "
            "SeaweedFS, MinIO, Ceph RGW >= Reef) or a shared directory as store.root"
        )
        try:
            created = self.write_if_absent(key, b"1")
            again = self.write_if_absent(key, b"2")
            _, version = self.read_versioned(key)
            stale = self.write_if_version(key, b"3", '"00000000000000000000000000000000"')
            swapped = self.write_if_version(key, b"4", version)
        except botocore.exceptions.ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status != 501 and str(e.response.get("Error", {}).get("Code", "")) != "NotImplemented":
                raise self._error(e, key) from e
            raise ConditionalWritesUnsupported(
                f"{what} does not implement conditional writes (If-None-Match/If-Match answered 501); {fix}"
            ) from None
        finally:
            with contextlib.suppress(Exception):
                self.delete(key)
        ignored = [name for name, ok in (("If-None-Match", not again), ("If-Match", not stale)) if not ok]
        if not (created and swapped) or ignored:
            raise ConditionalWritesUnsupported(
                f"{what} ignores conditional writes ({', '.join(ignored) or 'a valid condition was refused'}); {fix}"
            )
        self.conn.conditional_ok.add(self.bucket)

    def write_if_version(self, key: str, data: bytes, version: str) -> bool:
        return self._put_conditional(key, data, IfMatch=version)

    def upload_file(self, local_path: str, key: str) -> None:
        """Multipart + parallel above 16 MiB (boto3's transfer manager)."""
        c = self.conn.client()
        self._call(
            c.upload_file,
            key,
            Filename=str(local_path),
            Bucket=self.bucket,
            Key=self._key(key),
            Config=self.conn.transfer_config(),
        )

    def download_file(self, key: str, local_path: str) -> None:
        """Parallel ranged GETs above 16 MiB; the local file appears atomically."""
        c = self.conn.client()
        atomic_copy(
            lambda tmp: self._call(
                c.download_file,
                key,
                Bucket=self.bucket,
                Key=self._key(key),
                Filename=tmp,
                Config=self.conn.transfer_config(),
            ),
            str(local_path),
        )
