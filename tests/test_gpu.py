"""The CUDA path, on a real GPU: bf16 numerics of the three models, the fused SDPA kernel on MSCA's attention,
nccl through msca.runtime.dist's rendezvous, a DeepSpeed ZeRO-2 bf16 training job, checkpoint resume and model.pt.

Every test is marked `gpu` and skipped where torch sees no CUDA device (the CPU machines that run the rest of
the suite); infra/gpu/check.sh runs `pytest -m gpu tests/test_gpu.py` on the GPU machine. The DeepSpeed tests run
the real train job (jobs.train.Train) in this process with one rank: the code a `cluster.gpus_per_node=N` run
executes on each rank, minus the other ranks.
"""

from __future__ import annotations

import io
import os

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() is False"),
]

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
MODELS = ("vit_b16", "tokenshift_b16", "msca_b16")
# B/16 width and heads (so MSCA's 12-head split and SDPA's head_dim 64 are the real ones), fewer layers and a
# smaller frame so the numerics test is quick: the per-layer rounding is what is under test, not depth.
SMALL = dict(img_size=112, depth=4, num_classes=400)
# bf16 keeps 8 mantissa bits (relative rounding 2**-9 ~ 2e-3 per op); through 4 blocks of fp32-accumulated
# matmuls the logits differ from fp32 by ~0.6 % (relative L2, measured with CPU bf16 for all three models and
# both modes), so the bounds leave 5-8x room for the GPU kernels' own accumulation
# order. Gradients are checked by direction (cosine): tiny entries have large relative errors that do not
# matter to the optimizer.
LOGITS_REL_TOL = {"autocast": 3e-2, "bf16_weights": 5e-2}
GRAD_COSINE_MIN = 0.99


# --------------------------------------------------------------------------------------------- bf16 numerics
def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in fp32."""
    return float((a.float() - b.float()).norm() / b.float().norm())


def forward_backward(model: torch.nn.Module, video: torch.Tensor, labels: torch.Tensor, mode: str):
    """Logits (fp32) and the flat fp32 gradient of a cross-entropy step. mode: fp32 | autocast | bf16_weights
    (bf16_weights: the module and input cast to bf16, as DeepSpeed's bf16 engine and Trainer.loss run it)."""
    model.zero_grad(set_to_none=True)
    if mode == "bf16_weights":
        model = model.to(torch.bfloat16)
        video = video.to(torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "autocast"):
        logits = model(video).float()  # (B, K)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    grad = torch.cat([p.grad.float().flatten() for p in model.parameters()])  # (P,)
    return logits.detach(), grad


@pytest.fixture
def exact_fp32():
    """The fp32 reference without TF32 (cuDNN's convolutions, the patch embedding, allow it by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("mode", ["autocast", "bf16_weights"])
@pytest.mark.parametrize("name", MODELS)
def test_bf16_forward_backward_matches_fp32(name, mode, exact_fp32):
    from msca.model import create_model

    torch.manual_seed(0)
    model = create_model(name, **SMALL).cuda()
    gen = torch.Generator(device="cuda").manual_seed(1)
    video = torch.randn(2, 8, 3, 112, 112, device="cuda", generator=gen)  # (B, T, 3, H, W)
    labels = torch.randint(0, 400, (2,), device="cuda", generator=gen)  # (B,)
    ref_logits, ref_grad = forward_backward(model, video, labels, "fp32")
    logits, grad = forward_backward(model, video, labels, mode)
    err = rel_err(logits, ref_logits)
    cos = float(torch.nn.functional.cosine_similarity(grad.double(), ref_grad.double(), dim=0))  # fp32 over
    # ~30M entries drifts past 1.0
    assert torch.isfinite(logits).all() and torch.isfinite(grad).all()
    assert err <= LOGITS_REL_TOL[mode], f"{name} {mode}: logits relative error {err:.3g} vs fp32"
    assert cos >= GRAD_COSINE_MIN, f"{name} {mode}: gradient cosine {cos:.4f} vs fp32"


# ------------------------------------------------------------------------------------------------ SDPA kernel
def msca_attention() -> torch.nn.Module:
    """MSCA-B/16's attention layer as built (768 wide, 12 heads, K/V of heads 0 and 11 from t+1 / t-1), bf16."""
    from msca.model import create_model

    return create_model("msca_b16", depth=1).blocks[0].attn.cuda().to(torch.bfloat16)


def attention_step(attn: torch.nn.Module) -> None:
    """Forward and backward on MSCA-B/16's token layout: 2 clips x 8 frames x 197 tokens x 768."""
    x = torch.randn(2, 8, 197, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)  # (B, T, N, C)
    attn(x).float().square().mean().backward()
    torch.cuda.synchronize()


def test_flash_attention_runs_msca_shapes():
    """Restricted to the flash kernel, SDPA raises 'No available kernel' if the shifted q/k/v (strides, dtype,
    head_dim) do not qualify; running proves they do."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        attention_step(msca_attention())


def test_sdpa_selects_a_fused_kernel_for_msca_by_default():
    """With no restriction (as training runs), the profiler shows a fused SDPA op (flash, memory-efficient or
    cuDNN), never the math fallback that materialises the (N, N) attention matrix per head."""
    from torch.profiler import ProfilerActivity, profile

    attn = msca_attention()
    attention_step(attn)  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        attention_step(attn)
    ops = {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}
    fused = {op for op in ops if any(k in op for k in ("flash", "efficient", "cudnn"))}
    assert fused, f"no fused SDPA op ran: {sorted(ops)}"
    assert not any("math" in op for op in ops), f"SDPA fell back to math: {sorted(ops)}"


# ------------------------------------------------------------------------------- one rank: nccl and DeepSpeed
@pytest.fixture(scope="module")
def nccl_group():
    """One rank joined through msca.runtime.dist.init_distributed with the variables the local backend exports
    (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*: process_env's torchrun branch, as on a cluster node). Torn down so
    the rest of a suite in this process sees no group."""
    import torch.distributed as tdist

    from msca.runtime import dist

    saved = {k: os.environ.get(k) for k in (*dist.TORCH_KEYS, "LOCAL_WORLD_SIZE")}
    os.environ.update(
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(dist.free_port()),
    )
    dist.init_distributed(timeout_s=120)
    yield
    if tdist.is_initialized():
        tdist.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_nccl_initialised_through_msca_rendezvous(nccl_group):
    import torch.distributed as tdist

    from msca.runtime import dist

    assert tdist.get_backend() == "nccl"
    assert (dist.rank(), dist.world_size()) == (0, 1)
    assert dist.device() == torch.device("cuda", 0)  # init_distributed's set_device(LOCAL_RANK)
    t = torch.full((4,), 2.0, device="cuda")
    tdist.all_reduce(t)
    assert t.tolist() == [2.0] * 4
    assert dist.all_reduce_mean([3.0]) == [3.0]


def compose_run(tmp_path, overrides: list[str]):
    """A resolved config and its run home, written as launch.py writes them."""
    from hydra import compose, initialize_config_dir

    from msca.config import register_schema
    from msca.launcher import absolutize
    from msca.runstate.home import RunHome, run_uri

    register_schema()
    fixed = [
        f"store.root={tmp_path / 'store'}",
        "run.name=gpu",
        f"data.root={tmp_path / 'synthetic'}",
        "data.synthetic.videos_per_class=8",
        "data.synthetic.val_videos_per_class=2",
        "data.batch_size=4",
        "data.num_workers=1",
        "train.val_every=0",
        "train.log_every=1",
        "train.progress=false",
        "eval.at_end=false",
        "checkpoint.background=false",
    ]
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(config_name="config", overrides=fixed + overrides)
    absolutize(cfg)
    home = RunHome(run_uri(cfg.store.root, cfg.run.name))
    home.write_config(cfg)
    return cfg, home


def zero2_masters(engine) -> dict[str, torch.Tensor]:
    """fp32 masters read straight from ZeRO-2's flat fp32 partition (one rank: the whole group), each at its
    parameter's offset in the bf16 flat buffer it is a view of; independent of DeepSpeed's hp-param links,
    which msca.training.master_weights uses."""
    opt, out = engine.optimizer, {}
    names = {id(p): n for n, p in engine.module.named_parameters()}
    for flat16, flat32, params in zip(opt.bit16_groups_flat, opt.single_partition_of_fp32_groups, opt.bit16_groups):
        assert flat32.numel() == flat16.numel(), "one rank holds the whole partition"
        for p in params:
            offset = (p.data_ptr() - flat16.data_ptr()) // p.element_size()
            out[names[id(p)]] = flat32[offset : offset + p.numel()].view_as(p).detach().float().cpu().clone()
    return out


@pytest.fixture(scope="module")
def zero2_run(nccl_group, tmp_path_factory):
    """The train job (jobs.train.Train, as every backend runs it) for 3 steps of tiny MSCA with ZeRO-2 bf16;
    returns the run home, its trainer and the masters read right after the job wrote model.pt."""
    import jobs.train
    from msca.training.trainer import Trainer

    class Recorded(Trainer):
        last = None

        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            Recorded.last = self

    cfg, home = compose_run(
        tmp_path_factory.mktemp("zero2"), ["model=msca_tiny", "deepspeed=zero2_bf16", "train.max_steps=3"]
    )
    real = jobs.train.Trainer
    jobs.train.Trainer = Recorded
    try:
        result = jobs.train.Train(home.uri)()
    finally:
        jobs.train.Trainer = real
    return dict(cfg=cfg, home=home, trainer=Recorded.last, result=result, masters=zero2_masters(Recorded.last.engine))


def test_zero2_bf16_training_steps(zero2_run):
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    from msca.runstate.metrics import read_metrics

    engine = zero2_run["trainer"].engine
    assert zero2_run["result"]["step"] == 3
    assert engine.zero_optimization_stage() == 2 and engine.bfloat16_enabled()
    assert isinstance(engine.optimizer, DeepSpeedZeroOptimizer)
    assert all(p.dtype == torch.bfloat16 and p.is_cuda for p in engine.module.parameters())
    losses = [r["loss"] for r in read_metrics(zero2_run["home"].store) if r["kind"] == "train"]
    assert len(losses) == 3 and torch.isfinite(torch.tensor(losses)).all(), losses


def test_model_pt_holds_the_gathered_fp32_masters(zero2_run):
    home, masters = zero2_run["home"], zero2_run["masters"]
    state = torch.load(io.BytesIO(home.store.read_bytes("model.pt")), map_location="cpu", weights_only=True)
    module = {k: v.detach().cpu() for k, v in zero2_run["trainer"].engine.module.state_dict().items()}
    assert state.keys() == module.keys()
    assert all(v.dtype == torch.float32 for v in state.values())
    for name, master in masters.items():
        assert torch.equal(state[name], master), name
        assert torch.equal(master.to(torch.bfloat16), module[name]), name  # the module is the rounded masters
    lost = sum(int((v != v.to(torch.bfloat16).float()).sum()) for v in masters.values())
    total = sum(v.numel() for v in masters.values())
    assert lost > total // 2, f"only {lost}/{total} weights carry bits below bf16: not the masters"


def one_step(trainer, batch) -> float:
    """One optimizer step on `batch` with the math SDPA kernel: the claim is that a restored engine steps
    exactly as the saved one would, and the fused kernels' backward may accumulate in a varying order."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        loss = trainer.loss(batch)
        trainer.engine.backward(loss)
        trainer.engine.step()
    return float(loss.detach())


def test_checkpoint_resume_takes_the_identical_next_step(zero2_run):
    """The job committed step 3. A fresh Trainer on the same run home restores it (CheckpointManager.load_latest,
    from GPU memory to disk and back); its next step equals the original engine's next step bit for bit."""
    from msca.training.master_weights import fp32_state_dict
    from msca.training.trainer import Trainer

    cfg, home, original = zero2_run["cfg"], zero2_run["home"], zero2_run["trainer"]
    assert original.ckpt.committed_steps()[-1] == 3
    gen = torch.Generator().manual_seed(2)
    batch = {"video": torch.randn(4, 8, 3, 32, 32, generator=gen), "label": torch.tensor([0, 1, 1, 0])}
    restored = Trainer(cfg, home)
    assert restored.state.step == 3
    assert all(
        torch.equal(a, b) for a, b in zip(original.engine.module.parameters(), restored.engine.module.parameters())
    )
    loss_a, loss_b = one_step(original, batch), one_step(restored, batch)
    assert loss_a == loss_b
    after_a, after_b = fp32_state_dict(original.engine), fp32_state_dict(restored.engine)
    assert after_a.keys() == after_b.keys()
    assert all(torch.equal(after_a[k], after_b[k]) for k in after_a)
    assert original.optimizer.param_groups[0]["lr"] == restored.optimizer.param_groups[0]["lr"]
