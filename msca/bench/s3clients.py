"""S3 clients on the frame hot path: GETs/s and CPU-ms per GET of the same frames, ratios in one run.

    python -m msca.bench s3clients [--frames 600] [--rounds 5] [--threads 8]

Starts a SeaweedFS (off the core the client is pinned to), uploads Kinetics-like 331x440 JPEG frames, then
reads all of them with each candidate of `msca.storage.clients` (msca's read path on obstore, bare obstore, boto3)
from `--threads` threads in this process, pinned to one core, round by round so noise hits all alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from msca.bench.data import make_videos, start_seaweedfs
from msca.storage import open_store
from msca.storage.clients import CANDIDATES, getter


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m msca.bench s3clients", description=__doc__)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=8)
    a = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="msca-bench-s3c-")
    work = Path(tmp.name)
    allowed = sorted(os.sched_getaffinity(0))
    server = start_seaweedfs(work / "seaweedfs", ",".join(map(str, allowed[1:])))
    try:
        os.environ.update(AWS_ACCESS_KEY_ID=server["key"], AWS_SECRET_ACCESS_KEY=server["secret"])
        make_videos(work / "frames", 2, a.frames // 2, 331, 440, 90)
        local = open_store(str(work / "frames"))
        bucket = f"s3c-{uuid.uuid4().hex[:8]}"
        s3 = open_store(f"s3://{bucket}/k400", endpoint_url=server["endpoint"])
        s3.conn.client().create_bucket(Bucket=bucket)
        keys = [k for k in local.list() if k.endswith(".jpg")]
        s3.write_many([(k, local.read_bytes(k)) for k in keys], max_workers=16)
        want = {k: len(local.read_bytes(k)) for k in keys}
        gets = {}
        for name in CANDIDATES:
            gets[name] = getter(name, s3)
        os.sched_setaffinity(0, {allowed[0]})
        rates = {n: [] for n in gets}
        cpu = {n: [] for n in gets}
        with ThreadPoolExecutor(a.threads) as pool:
            for r in range(a.rounds + 1):  # round 0 warms connections
                for name, get in gets.items():
                    c0, t0 = time.process_time(), time.perf_counter()
                    sizes = list(pool.map(lambda k, get=get: len(get(k)), keys))
                    wall, c = time.perf_counter() - t0, time.process_time() - c0
                    assert sizes == [want[k] for k in keys], name
                    if r:
                        rates[name].append(len(keys) / wall)
                        cpu[name].append(1000 * c / len(keys))
        os.sched_setaffinity(0, set(allowed))
        base_r, base_c = statistics.median(rates["boto3"]), statistics.median(cpu["boto3"])
        print(f"\n{'client':<8} {'GET/s':>7} {'vs boto3':>8} {'cpu-ms/GET':>10} {'vs boto3':>8}")
        for name in gets:
            r, c = statistics.median(rates[name]), statistics.median(cpu[name])
            print(f"{name:<8} {r:>7.0f} {r / base_r:>7.2f}x {c:>10.3f} {c / base_c:>7.2f}x")
        print(f"({len(keys)} frames of ~{sum(want.values()) / len(keys) / 1024:.0f} KiB, {a.threads} threads, 1 core)")
    finally:
        subprocess.run(
            ["bash", str(server["script"]), "stop", str(server["dir"])],
            capture_output=True,
            env=dict(os.environ, SEAWEEDFS_STOP_TIMEOUT="5"),
        )
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
