"""What the input pipeline and DeepSpeed cost: end-to-end clips/s of the training job vs the model alone.

    python -m msca.bench train                          # the embedded default (tiny MSCA, synthetic data)
    python -m msca.bench train --steps 20 model=msca_b16 data.crop_size=224 data.batch_size=2

Same process, same engine, interleaved rounds:
  model    engine forward+backward+step on one batch already in memory (no data loading)
  data     the real loader alone (decode, augment, collate)
  e2e      the real loop: loader -> engine
Ratios are against `model` in the same run. MFU = model FLOPs (counted by torch's FlopCounterMode on one
step) / step time / measured peak matmul throughput of this device (bf16 on GPU, fp32 on CPU).
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m msca.bench train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="timed micro-steps per mode per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for launch.py")
    return p.parse_args(argv)


def compose(overrides: list[str], tmp: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from msca.config import register_schema

    register_schema()
    fixed = [f"store.root={tmp}", "run.name=bench", "train.val_every=0", "train.progress=false",
             "checkpoint.every_epochs=0", "train.epochs=1000"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=fixed + overrides)


def peak_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
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


def main(argv=None) -> int:
    args = parse(argv)
    from msca.config import absolutize
    from msca.runstate.home import RunHome, run_uri
    from msca.runtime import dist
    from msca.training.trainer import Trainer

    tmp = tempfile.mkdtemp(prefix="msca-bench-train-")
    cfg = compose(args.overrides, tmp)
    absolutize(cfg)
    dist.setup_logging()
    dist.init_distributed()
    home = RunHome(run_uri(cfg.store.root, cfg.run.name))
    home.write_config(cfg)
    trainer = Trainer(cfg, home)
    device, bs = trainer.device, cfg.data.batch_size

    trainer.sampler.set_epoch(0)
    from msca.data import build_loader

    loader = build_loader(trainer.train_set, trainer.sampler, bs, cfg.data.num_workers, drop_last=True)
    stream = itertools.cycle(loader)  # a cycled loader restarts its workers each pass; fine for timing
    fixed = next(stream)

    def model_step():
        trainer.engine.backward(trainer.loss(fixed))
        trainer.engine.step()

    def data_step():
        next(stream)

    def e2e_step():
        batch = next(stream)
        trainer.engine.backward(trainer.loss(batch))
        trainer.engine.step()

    modes = {"model": model_step, "data": data_step, "e2e": e2e_step}
    for fn in modes.values():  # warm-up
        fn()
    times = {m: [] for m in modes}
    for _ in range(args.rounds):
        for name, fn in modes.items():
            times[name].append(timed(fn, args.steps, device))
    med = {m: statistics.median(v) for m, v in times.items()}

    flops = step_flops(trainer, fixed)
    peak = peak_matmul_flops(device, trainer.dtype if device.type == "cuda" else torch.float32)
    print(f"\n{cfg.model.name} | batch {bs} x {cfg.data.num_frames} frames @ {cfg.data.crop_size}px | "
          f"{cfg.deepspeed.precision} ZeRO-{cfg.deepspeed.zero_stage} | {cfg.data.num_workers} loader workers | "
          f"{device} | {args.rounds} rounds x {args.steps} steps")
    print(f"{'mode':<8}{'s/step':>10}{'clips/s':>10}{'vs model':>10}")
    for name in modes:
        print(f"{name:<8}{med[name]:>10.4f}{bs / med[name]:>10.1f}{med['model'] / med[name]:>10.2f}")
    mfu_model, mfu_e2e = flops / med["model"] / peak, flops / med["e2e"] / peak
    print(f"model FLOPs/step {flops / 1e9:.2f} G | measured peak {peak / 1e12:.2f} TFLOP/s | "
          f"MFU model {100 * mfu_model:.1f}% e2e {100 * mfu_e2e:.1f}%")
    return 0
