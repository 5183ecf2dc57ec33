"""Candidate S3 clients for the frame hot path, behind one call shape, so `python -m msca.bench s3clients` can
measure them on the same objects: `getter(name, store)` -> `get(key) -> bytes` for keys relative to the store.

  fast     today's path: `S3Store.read_bytes` (hand-signed GET over http.client, boto3 on anything unusual)
  boto3    boto3's get_object (botocore's signer and urllib3 pool)
  obstore  obstore (Rust object_store), if installed: `pip install obstore`

Only for evaluation; the store keeps using its own path until a candidate is adopted.
"""

from __future__ import annotations

from typing import Callable

from msca.storage.s3 import S3Store

CANDIDATES = ("fast", "boto3", "obstore")


def getter(name: str, store: S3Store) -> Callable[[str], bytes]:
    if name == "fast":
        return store.read_bytes
    if name == "boto3":
        client = store.conn.client()

        def get(key: str) -> bytes:
            resp = client.get_object(Bucket=store.bucket, Key=store._key(key))
            try:
                return resp["Body"].read()
            finally:
                resp["Body"].close()

        return get
    if name == "obstore":
        import obstore
        from obstore.store import S3Store as ObS3Store

        conn = store.conn
        conn.client()  # resolves region and the boto3 credential chain, as the store does
        creds = conn._session.get_credentials().get_frozen_credentials()
        kw = dict(region=conn.region, access_key_id=creds.access_key, secret_access_key=creds.secret_key)
        if creds.token:
            kw["session_token"] = creds.token
        if conn.endpoint_url:
            kw["endpoint"] = conn.endpoint_url
            kw["client_options"] = {"allow_http": conn.endpoint_url.startswith("http://")}
        ob = ObS3Store(store.bucket, **kw)

        def get(key: str) -> bytes:
            return bytes(obstore.get(ob, store._key(key)).bytes())

        return get
    raise ValueError(f"unknown S3 client {name!r}; one of {', '.join(CANDIDATES)}")
