"""Where everything that persists lives: one `Store` interface for local paths and `s3://bucket/prefix` URIs.

Frames, list files, run homes and checkpoints all go through a `Store` rooted at a URI, with '/'-separated keys
relative to that root, so the same code runs against a shared filesystem or any S3-compatible server.
`base` (the interface and its errors), `local` (a directory), `s3` (the only importer of boto3).
"""

from __future__ import annotations

import os
from typing import Optional, Union

from msca.storage.base import BucketNotFoundError, ConditionalWritesUnsupported, Store, StoreAuthError, is_remote
from msca.storage.local import LocalStore
from msca.storage.s3 import ENDPOINT_ENV_VARS, RETRY_S, S3Store, _S3Conn
from msca.storage.s3_reads import worker_context

__all__ = [
    "worker_context",
    "BucketNotFoundError",
    "ENDPOINT_ENV_VARS",
    "LocalStore",
    "RETRY_S",
    "S3Store",
    "Store",
    "StoreAuthError",
    "ConditionalWritesUnsupported",
    "is_remote",
    "open_store",
]


def open_store(uri: Union[str, os.PathLike], endpoint_url: Optional[str] = None, **s3_options) -> "Store":
    """Open a store rooted at `uri`: a local path (or file://) or `s3://bucket[/prefix]`.

    `s3_options` (S3 only): region_name, aws_access_key_id, aws_secret_access_key, aws_session_token,
    profile_name, max_attempts (adaptive retries, default 8), max_pool_connections (default 64),
    addressing_style ("path" by default for custom endpoints), transfer_concurrency (default 8).
    """
    uri = str(uri)
    if is_remote(uri):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"{uri!r}: an s3:// URI needs a bucket (s3://bucket/prefix)")
        return S3Store(bucket, prefix.strip("/"), _S3Conn(endpoint_url, s3_options))
    if s3_options:
        raise TypeError(f"S3 options {sorted(s3_options)} given for a local path {uri!r}")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return LocalStore(os.path.abspath(os.path.expanduser(uri)))
