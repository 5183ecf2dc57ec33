"""Forward+backward step time of the model variants, interleaved in one run so machine noise hits all alike
(on a shared machine the min ratio is the steadier number).

    python -m msca.bench model                                # small and B/16 sizes, defaults sized for 2 CPU cores
    python -m msca.bench model --sizes b16 --batch 8 --iters 50   # on a GPU: bf16 autocast + flash SDPA
"""

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from msca.model import create_model

# name -> (architecture overrides, default batch B, default frames T)
SIZES = {
    "small": (dict(img_size=112, patch_size=16, embed_dim=384, depth=6, num_heads=12), 2, 8),  # 12 heads: fold 1
    "b16": (dict(), 1, 8),  # ViT-B/16, 224 px, the presets as released
}
MODELS = ("vit_b16", "msca_b16", "tokenshift_b16")


def parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m msca.bench model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="small,b16", help=f"comma list of {', '.join(SIZES)}")
    p.add_argument("--models", default=",".join(MODELS), help="comma list of presets; the first is the baseline")
    p.add_argument("--batch", type=int, help="clips per step (default: per size)")
    p.add_argument("--frames", type=int, help="frames per clip (default: per size)")
    p.add_argument("--iters", type=int, default=None, help="timed steps per model (default 15 small, 3 b16)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a shared machine)")
    return p.parse_args(argv)


def contexts(device):
    """bf16 autocast and the flash SDPA kernel on CUDA; plain fp32 on CPU."""
    stack = contextlib.ExitStack()
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
        stack.enter_context(sdpa_kernel([SDPBackend.FLASH_ATTENTION]))
    return stack


def step(model, x, y, device):
    """One forward+backward; returns wall seconds (after the device finished)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.zero_grad(set_to_none=True)
    with contexts(device):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_size(size, args, device):
    arch, B, T = SIZES[size]
    B, T = args.batch or B, args.frames or T
    iters = args.iters or (15 if size == "small" else 3)
    names = args.models.split(",")
    models = {n: create_model(n, **arch).to(device).train() for n in names}
    img = models[names[0]].patch_embed.grid_size[0] * models[names[0]].patch_embed.proj.kernel_size[0]
    x = torch.randn(B, T, 3, img, img, device=device)  # (B, T, 3, H, W)
    y = torch.randint(0, 400, (B,), device=device)
    times = {n: [] for n in names}
    for i in range(args.warmup + iters):
        for n in names[i % len(names) :] + names[: i % len(names)]:  # rotate the order every round
            dt = step(models[n], x, y, device)
            if i >= args.warmup:
                times[n].append(dt)
    base, base_min = statistics.median(times[names[0]]), min(times[names[0]])
    rows = []
    for n in names:
        med, lo = statistics.median(times[n]), min(times[n])
        rows.append(
            f"| {size} | B={B} T={T} | {n} | {med * 1e3:.1f} | {lo * 1e3:.1f} | {med / base:.3f} "
            f"| {lo / base_min:.3f} |"
        )
    return rows


def main(argv=None):
    args = parse(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(
        f"# model step time (forward+backward), torch {torch.__version__}, {where}, "
        f"{'bf16 autocast + flash SDPA' if device.type == 'cuda' else 'fp32'}"
    )
    base = args.models.split(",")[0]
    print(f"| size | batch | model | median ms | min ms | median / {base} | min / {base} |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        for row in bench_size(size, args, device):
            print(row, flush=True)
    return 0
