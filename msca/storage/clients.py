"""S3 clients on the frame hot path, behind one call shape, so `python -m msca.bench s3clients` can measure them
on the same objects: `getter(name, store)` -> `get(key) -> bytes` for keys relative to the store.

  msca     `S3Store.read_bytes`: obstore with msca's error mapping (what the data pipeline uses)
  obstore  a bare obstore GET on the same store (the client's own cost, without msca's wrapper)
  boto3    boto3's get_object (botocore's signer and urllib3 pool), the baseline
"""

from __future__ import annotations

from typing import Callable

import obstore

from msca.storage.s3 import S3Store

CANDIDATES = ("msca", "obstore", "boto3")


def getter(name: str, store: S3Store) -> Callable[[str], bytes]:
    if name == "msca":
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
        ob = store.conn.objects(store.bucket)

        def get(key: str) -> bytes:
            return bytes(obstore.get(ob, store._key(key)).bytes())

        return get
    raise ValueError(f"unknown S3 client {name!r}; one of {', '.join(CANDIDATES)}")
