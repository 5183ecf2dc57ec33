"""What the input pipeline and DeepSpeed cost: end-to-end clips/s of the training job vs the model alone.

    python -m msca.bench train                          # the embedded default (tiny MSCA, synthetic data)
    python -m msca.bench train --steps 20 model=msca_b16 data.crop_size=224 data.batch_size=2
    python -m msca.bench train --models vit_b16,tokenshift_b16,msca_b16 deepspeed=zero2_bf16 \
        data.crop_size=224 'data.train_short_side=[224,256]' data.test_short_side=224 --json out.json

Same process, same engine, interleaved rounds:
  model    engine forward+backward+step on one batch already in memory (no data loading)
  data     the trainer's own loader alone (decode, augment, collate, pin)
  e2e      the real loop: loader -> engine
Ratios are against `model` in the same run. MFU = model FLOPs (counted by torch's FlopCounterMode on one
step) / step time / measured peak matmul throughput of this device (bf16 on GPU, fp32 on CPU). `--models`
measures several model configs one after another in one process (one peak measurement, one table); the
`vs first` column is each model's step time over the first one's (MSCA-B/16's overhead over ViT-B/16).
data wait = share of the e2e step spent blocked in next(loader): what the GPU would idle for want of data.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m msca.bench train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=10, help="timed micro-steps per mode per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    p.add_argument("--models", default="", help="comma list of model configs (configs/model/) measured in turn")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for launch.py")
    return p.parse_args(argv)


def compose(overrides: list[str], tmp: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from msca.config import register_schema

    register_schema()
    fixed = [
        f"store.root={tmp}",
        "run.name=bench",
        "train.val_every=0",
        "train.progress=false",
        "checkpoint.every_epochs=0",
        "train.epochs=1000",
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=fixed + overrides)


def peak_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Dense square matmul throughput: the ceiling MFU is measured against. 8192 on a GPU (4096 leaves an
    H100 well short of its peak, which would flatter the MFU)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)  # (n, n)
    b = torch.randn(n, n, device=device, dtype=dtype)  # (n, n)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 5
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(trainer, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainer.engine.backward(trainer.loss(batch))
    trainer.engine.zero_grad()
    return float(counter.get_total_flops())


def timed(fn, steps: int, device) -> float:
    """Seconds per call of fn, over `steps` calls."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def endless(loader):
    """The loader re-iterated forever. (itertools.cycle would replay the first pass from memory: after one
    epoch the data and e2e modes would time cached batches, and hold every batch of the epoch.)"""
    while True:
        yield from loader


def build_trainer(overrides: list[str]):
    """A Trainer on a fresh run home, as the training job builds it (same loader, pinning, engine)."""
    from msca.config import absolutize
    from msca.runstate.home import RunHome, run_uri
    from msca.training.trainer import Trainer

    cfg = compose(overrides, tempfile.mkdtemp(prefix="msca-bench-train-"))
    absolutize(cfg)
    home = RunHome(run_uri(cfg.store.root, cfg.run.name))
    home.write_config(cfg)
    return cfg, Trainer(cfg, home)


def measure(overrides: list[str], steps: int, rounds: int) -> dict:
    """Median seconds per micro-step of each mode, the step's FLOPs, peak GPU memory and the data-wait share."""
    cfg, trainer = build_trainer(overrides)
    device, bs = trainer.device, cfg.data.batch_size
    trainer.sampler.set_epoch(0)
    stream = endless(trainer.loader)
    fixed = next(stream)
    waited = [0.0]  # seconds blocked in next(stream) during e2e steps

    def model_step():
        trainer.engine.backward(trainer.loss(fixed))
        trainer.engine.step()

    def data_step():
        next(stream)

    def e2e_step():
        t0 = time.perf_counter()
        batch = next(stream)
        waited[0] += time.perf_counter() - t0
        trainer.engine.backward(trainer.loss(batch))
        trainer.engine.step()

    modes = {"model": model_step, "data": data_step, "e2e": e2e_step}
    for fn in modes.values():  # warm-up
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    waited[0] = 0.0
    times = {m: [] for m in modes}
    for _ in range(rounds):
        for name, fn in modes.items():
            times[name].append(timed(fn, steps, device))
    med = {m: statistics.median(v) for m, v in times.items()}
    peak_mem = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    out = dict(
        model=cfg.model.name,
        batch=bs,
        frames=cfg.data.num_frames,
        crop=cfg.data.crop_size,
        precision=cfg.deepspeed.precision,
        zero=cfg.deepspeed.zero_stage,
        workers=cfg.data.num_workers,
        device=str(device),
        s_per_step=med,
        flops=step_flops(trainer, fixed),
        peak_mem_bytes=peak_mem,
        data_wait_share=waited[0] / (sum(times["e2e"]) * steps),
        dtype=str(trainer.dtype),
    )
    trainer.ckpt.wait()
    return out


def release() -> None:
    """Free the last model's engine, loader workers and GPU memory (unreachable once `measure` returned)
    before the next model is built in the same process."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def report(results: list[dict], peak: float, steps: int, rounds: int) -> None:
    first = results[0]
    print(
        f"\nbatch {first['batch']} x {first['frames']} frames @ {first['crop']}px | {first['precision']} "
        f"ZeRO-{first['zero']} | {first['workers']} loader workers | {first['device']} | {rounds} rounds x "
        f"{steps} steps | measured peak {peak / 1e12:.2f} TFLOP/s"
    )
    print(f"{'model':<16}{'mode':<7}{'s/step':>9}{'clips/s':>9}{'vs model':>9}")
    for r in results:
        med = r["s_per_step"]
        for name, s in med.items():
            print(f"{r['model']:<16}{name:<7}{s:>9.4f}{r['batch'] / s:>9.1f}{med['model'] / s:>9.2f}")
    print(
        f"\n{'model':<16}{'GFLOP/step':>11}{'TFLOP/s':>9}{'MFU':>7}{'MFU e2e':>9}{'peak GiB':>10}"
        f"{'data wait':>10}{'vs first':>9}"
    )
    for r in results:
        med = r["s_per_step"]
        mem = f"{r['peak_mem_bytes'] / 2**30:.1f}" if r["peak_mem_bytes"] is not None else "-"
        print(
            f"{r['model']:<16}{r['flops'] / 1e9:>11.1f}{r['tflops']:>9.2f}{100 * r['mfu']:>6.1f}%"
            f"{100 * r['mfu_e2e']:>8.1f}%{mem:>10}{100 * r['data_wait_share']:>9.1f}%"
            f"{med['model'] / first['s_per_step']['model']:>9.3f}"
        )


def main(argv=None) -> int:
    args = parse(argv)
    from msca.runtime import dist

    dist.setup_logging()
    dist.init_distributed()
    models = [m for m in args.models.split(",") if m] or [None]
    results = []
    for model in models:
        overrides = args.overrides + ([f"model={model}"] if model else [])
        results.append(measure(overrides, args.steps, args.rounds))
        release()
    device = torch.device(results[0]["device"])
    dtype = getattr(torch, results[0]["dtype"].split(".")[-1]) if device.type == "cuda" else torch.float32
    peak = peak_matmul_flops(device, dtype)
    for r in results:
        r["tflops"] = r["flops"] / r["s_per_step"]["model"] / 1e12
        r["mfu"], r["mfu_e2e"] = (r["flops"] / r["s_per_step"][m] / peak for m in ("model", "e2e"))
        r["peak_flops"] = peak
    report(results, peak, args.steps, args.rounds)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0
