"""Checkpoint throughput to S3 and the training-loop stall of a save, against raw boto3 in the same run.

    python -m msca.bench checkpoint                       # ViT-B/16 + AdamW (~1 GB of state), SeaweedFS here
    python -m msca.bench checkpoint --tiny --rounds 1     # a quick smoke run (a 0.5M-parameter model)
    python -m msca.bench checkpoint --reshard             # resume at another world size (msca.bench.reshard)

One DeepSpeed engine (1 rank, ZeRO-0, fp32, torch AdamW after one step, so the optimizer state exists) and a
SeaweedFS started for the run. Interleaved rounds, medians reported:
  raw up / raw down   boto3 upload_file / download_file of exactly the files our save produced (the ceiling)
  save sync           CheckpointManager.save(background=False): serialise to node-local staging, upload, hash,
                      manifest -- what a synchronous checkpoint costs the loop
  save async stall    what the same save costs the loop with background=True: the time inside save() and at
                      the next commit, with the upload overlapping "training" (the loop sleeps for the time the
                      sync save took, as steps would)
  load                CheckpointManager.load_latest(): list, download, sha256-verify, engine.load_checkpoint
Throughput ratios are against raw boto3 of the same bytes; the stall against the sync save.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m msca.bench checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="msca_b16", help="a msca.model preset (msca_b16: ~1 GB with AdamW)")
    p.add_argument("--tiny", action="store_true", help="the preset at laptop size (embed 96, depth 4, 32 px)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--staging", default=None, help="checkpoint.staging_dir (default: a temp dir on disk)")
    return p.parse_args(argv)


def build_engine(model_name: str, tiny: bool):
    import deepspeed
    import torch

    from msca.model import create_model
    from msca.runtime import dist

    dist.init_distributed()
    overrides = dict(num_classes=400, num_frames=2)
    if tiny:
        overrides.update(embed_dim=96, depth=4, num_heads=4, patch_size=8, img_size=32)
    model = create_model(model_name, **overrides)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
        config={"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 0}, "steps_per_print": 10**9},
    )
    size = model.patch_embed.proj.weight.shape[-1] * (model.pos_embed.shape[1] - 1) ** 0.5
    video = torch.randn(1, 2, 3, int(size), int(size))  # (B, T, 3, H, W)
    engine.backward(engine(video).float().sum())
    engine.step()
    return engine


def main(argv=None) -> int:
    if argv and "--reshard" in argv:
        from msca.bench import reshard

        return reshard.main(argv)
    a = parse(argv)
    from msca.bench.data import start_seaweedfs
    from msca.runstate.checkpoint import CheckpointManager
    from msca.runstate.home import RunHome

    work = Path(tempfile.mkdtemp(prefix="msca-bench-ckpt-"))
    server = start_seaweedfs(work / "seaweedfs")
    try:
        os.environ.update(
            AWS_ACCESS_KEY_ID=server["key"], AWS_SECRET_ACCESS_KEY=server["secret"], MSCA_CACHE=str(work / "cache")
        )
        import boto3

        s3 = boto3.client("s3", endpoint_url=server["endpoint"], region_name="us-east-1")
        s3.create_bucket(Bucket="bench")
        engine = build_engine(a.model, a.tiny)
        staging = a.staging or str(work / "staging")
        times = {k: [] for k in ("raw_up", "raw_down", "save_sync", "async_stall", "load")}
        nbytes = 0
        for r in range(a.rounds):
            home = RunHome(f"s3://bench/runs/r{r}", endpoint_url=server["endpoint"])
            ckpt = CheckpointManager(engine, home, background=False, staging_dir=staging, keep_last=1)
            t0 = time.perf_counter()
            ckpt.save(1, {"step": 1})
            times["save_sync"].append(time.perf_counter() - t0)

            raw_dir = work / "raw"  # the same files, written once more locally, for boto3 alone
            shutil.rmtree(raw_dir, ignore_errors=True)
            engine.save_checkpoint(str(raw_dir), tag="t", save_latest=False)
            files = sorted(p for p in raw_dir.rglob("*") if p.is_file())
            nbytes = sum(f.stat().st_size for f in files)
            from boto3.s3.transfer import TransferConfig

            tc = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=8)
            t0 = time.perf_counter()
            for f in files:
                s3.upload_file(str(f), "bench", f"raw/r{r}/{f.name}", Config=tc)
            times["raw_up"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for f in files:
                s3.download_file("bench", f"raw/r{r}/{f.name}", str(work / f"dl-{f.name}"), Config=tc)
            times["raw_down"].append(time.perf_counter() - t0)
            for f in work.glob("dl-*"):
                f.unlink()

            t0 = time.perf_counter()
            CheckpointManager(engine, home, staging_dir=staging).load_latest()
            times["load"].append(time.perf_counter() - t0)

            bg = CheckpointManager(
                engine,
                RunHome(f"s3://bench/runs/bg{r}", endpoint_url=server["endpoint"]),
                background=True,
                staging_dir=staging,
            )
            t0 = time.perf_counter()
            bg.save(2, {"step": 2})
            stall = time.perf_counter() - t0
            deadline = time.perf_counter() + times["save_sync"][-1]  # "training" while it uploads
            while time.perf_counter() < deadline and bg._pending is not None:
                time.sleep(0.01)
                bg.commit_if_ready()
            t0 = time.perf_counter()
            bg.wait()
            times["async_stall"].append(stall + time.perf_counter() - t0)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
        print(report(times, nbytes, a.model))
    finally:
        subprocess.run(["bash", str(server["script"]), "stop", str(server["dir"])], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(times: dict, nbytes: int, model: str) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    mb = nbytes / 1e6
    rows = [
        ("save + upload (sync)", med["save_sync"], med["raw_up"], "raw boto3 upload_file"),
        ("download + verify + load", med["load"], med["raw_down"], "raw boto3 download_file"),
    ]
    lines = [
        f"checkpoint of {model}: {mb:.0f} MB in the store",
        "",
        "| operation | median s | MB/s | baseline MB/s | ratio (>= 0.8 target) |",
        "|---|---|---|---|---|",
    ]
    for name, ours, raw, base in rows:
        lines.append(f"| {name} | {ours:.2f} | {mb / ours:.0f} | {mb / raw:.0f} ({base}) | {raw / ours:.2f} |")
    lines += [
        "",
        "| loop stall | median s | vs sync save (<= 5 % target) |",
        "|---|---|---|",
        f"| sync save | {med['save_sync']:.2f} | 100 % |",
        f"| async save (background upload) | {med['async_stall']:.2f} | "
        f"{100 * med['async_stall'] / med['save_sync']:.0f} % |",
    ]
    return "\n".join(lines)
