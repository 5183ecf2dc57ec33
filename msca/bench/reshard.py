"""What resuming at another world size costs: a ZeRO-2 checkpoint written by 2 ranks, restored on 1 and on 4 ranks
(DeepSpeed universal checkpoint: converted once by rank 0, committed, fetched, loaded) against today's restore on
the same 2 ranks (direct), in one run.

    python -m msca.bench checkpoint --reshard           # ViT-B/16 (MSCA) + AdamW, fp32 masters and moments
    python -m msca.bench checkpoint --reshard --tiny    # a quick smoke run

Real gloo ranks (torch.multiprocessing), real DeepSpeed engines (one AdamW step, so the optimizer state exists),
CheckpointManager on a run home in a local folder (the store's I/O is the disk's: what is measured is the
conversion, not a network). Reported per target: the restore's wall time (all of `load_latest`), the conversion's
own time (rank 0, as recorded in the conversion's manifest), the extra bytes the conversion adds to the store, and
a second restore that reuses the committed conversion. Ratios are against the same-size restore of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

TAG = "step_000000001"


def parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m msca.bench checkpoint --reshard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--reshard", action="store_true", help="(the flag that selects this benchmark)")
    p.add_argument("--model", default="msca_b16", help="a msca.model preset (msca_b16: ~1.4 GB with AdamW, ZeRO-2)")
    p.add_argument("--tiny", action="store_true", help="the preset at laptop size (embed 96, depth 4, 32 px)")
    p.add_argument("--targets", default="1,4", help="world sizes to restore on (the checkpoint is written by 2)")
    p.add_argument("--work", default=None, help="folder for the run home (default: a temp dir on disk)")
    return p.parse_args(argv)


def build_engine(model_name: str, tiny: bool):
    import deepspeed
    import torch

    from msca.model import create_model

    overrides = dict(num_classes=400, num_frames=2)
    if tiny:
        overrides.update(embed_dim=96, depth=4, num_heads=4, patch_size=8, img_size=32)
    torch.manual_seed(0)
    model = create_model(model_name, **overrides)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
        config={"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2}, "steps_per_print": 10**9},
    )
    return engine, model


def worker(rank: int, world: int, port: int, a: argparse.Namespace, phase: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    import torch

    torch.set_num_threads(1)
    from msca.runstate.checkpoint import CheckpointManager
    from msca.runstate.home import RunHome
    from msca.runtime import dist

    dist.init_distributed(timeout_s=3600)
    engine, model = build_engine(a.model, a.tiny)
    ckpt = CheckpointManager(engine, RunHome(str(Path(a.work) / "home")), background=False)
    seconds = 0.0
    if phase == "save":
        size = model.patch_embed.proj.weight.shape[-1] * (model.pos_embed.shape[1] - 1) ** 0.5
        engine.backward(engine(torch.randn(1, 2, 3, int(size), int(size))).float().sum())  # (B, T, 3, H, W)
        engine.step()
        ckpt.save(1, {"epoch": 0, "samples": 2, "step": 1, "global_batch": 2})
        ckpt.wait()
    else:
        dist.barrier()
        t0 = time.perf_counter()
        assert ckpt.load_latest() is not None
        dist.barrier()
        seconds = time.perf_counter() - t0
    if dist.is_main():
        Path(out).write_bytes(pickle.dumps(seconds))
    engine.destroy()
    dist.shutdown()


def run(world: int, a, phase: str) -> float:
    import torch.multiprocessing as mp

    from msca.runtime.dist import free_port

    out = Path(a.work) / f"{phase}-{world}.pkl"
    mp.spawn(worker, args=(world, free_port(), a, phase, str(out)), nprocs=world, join=True)
    return pickle.loads(out.read_bytes())


def main(argv=None) -> int:
    a = parse(argv)
    from msca.runtime.dist import disable_deepspeed_shm_build

    disable_deepspeed_shm_build()
    own = a.work is None
    a.work = a.work or tempfile.mkdtemp(prefix="msca-bench-reshard-")
    step = Path(a.work) / "home" / "checkpoints" / TAG
    try:
        run(2, a, "save")
        source = sum(p.stat().st_size for p in step.rglob("*") if p.is_file())
        rows = [("2 -> 2 (direct, today)", run(2, a, "load"), None, 0)]
        for world in (int(w) for w in a.targets.split(",")):
            shutil.rmtree(step / "universal", ignore_errors=True)  # each target converts from scratch
            seconds = run(world, a, "load")
            manifest = json.loads((step / "universal" / "MANIFEST.json").read_text())
            extra = sum(o["size"] for o in manifest["objects"]) + (step / "universal" / "MANIFEST.json").stat().st_size
            rows.append((f"2 -> {world} (convert + load)", seconds, manifest["convert_s"], extra))
            rows.append((f"2 -> {world} (reuse the conversion)", run(world, a, "load"), None, 0))
        print(report(a.model + (" (tiny)" if a.tiny else ""), source, rows))
    finally:
        if own:
            shutil.rmtree(a.work, ignore_errors=True)
    return 0


def report(model: str, source: int, rows: list) -> str:
    base = rows[0][1]
    lines = [
        f"resume at another world size, {model}, ZeRO-2 fp32 + AdamW written by 2 ranks: {source / 1e6:.0f} MB",
        "",
        "| restore | wall s | vs same-size restore | conversion s (rank 0) | extra store MB |",
        "|---|---|---|---|---|",
    ]
    for name, seconds, convert_s, extra in rows:
        conv = f"{convert_s:.1f}" if convert_s is not None else "-"
        lines.append(f"| {name} | {seconds:.1f} | {seconds / base:.2f}x | {conv} | {extra / 1e6:.0f} |")
    return "\n".join(lines)
