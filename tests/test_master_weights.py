"""model.pt holds the fp32 master weights for every precision and ZeRO stage: two real ranks (gloo), real
DeepSpeed engines, a few AdamW steps, then `fp32_state_dict` compared with the module and the optimizer.

A precision this CPU cannot run (fp16 without AVX512-FP16/AMX-FP16) is asked the way the product asks
(DeepSpeed's accelerator): its cases assert that DeepSpeed refuses the engine and that msca's own check names
the option, instead of training."""

import os
import pickle

import pytest
import torch
import torch.multiprocessing as mp

from msca.runtime.dist import free_port
from msca.runtime.precision import precision_problem

pytestmark = pytest.mark.slow  # real processes: launch.py, ranks, or clusters

# (zero stage, precision): ZeRO-0 bf16/fp16 is DeepSpeed's FP16_UnfusedOptimizer (no hp link), ZeRO-1 bf16 its
# BF16_Optimizer, ZeRO-2 the partitioned optimizer, ZeRO-3 partitioned parameters too.
CASES = [(stage, precision) for stage in (0, 1, 2, 3) for precision in ("fp32", "bf16", "fp16")]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
UNSUPPORTED = {p for p in DTYPES if precision_problem(p)}  # on this machine's devices


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 4))


def module_weights(engine) -> dict:
    """The module's own (possibly rounded) parameters, gathered under ZeRO-3 (collective)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        return {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}


def run_case(stage: int, precision: str, rank: int) -> dict:
    import deepspeed

    from msca.training.master_weights import fp32_state_dict

    model = tiny_model()
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "steps_per_print": 10**9,
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
    }
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config=config
    )
    dtype = DTYPES[precision]
    gen = torch.Generator().manual_seed(rank)
    for _ in range(3):  # AdamW moves each weight by ~lr: below bf16's and fp16's resolution at these magnitudes
        x = torch.randn(4, 16, generator=gen).to(dtype)
        loss = engine(x).float().pow(2).mean()
        engine.backward(loss)
        engine.step()
    return {"masters": fp32_state_dict(engine), "module": module_weights(engine)}


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from msca.runtime.dist import init_distributed

    init_distributed(timeout_s=120)
    results = {}
    for case in CASES:
        try:
            results[case] = run_case(*case, rank)
        except ValueError as err:  # DeepSpeed's refusal, raised on every rank before any collective
            if case[1] not in UNSUPPORTED:
                raise
            results[case] = {"refused": str(err)}
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(results, f)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("masters")
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=2, join=True)
    return [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in range(2)]


@pytest.mark.parametrize("stage,precision", CASES)
def test_final_weights_are_the_fp32_masters(results, stage, precision):
    got = results[0][(stage, precision)]
    if precision in UNSUPPORTED:  # this CPU cannot: DeepSpeed refuses, and msca says so first, naming the option
        assert all(
            r[(stage, precision)] == {"refused": f"Type {precision} is not supported on your device."} for r in results
        )
        problem = precision_problem(precision, stage)
        assert problem.startswith(f"deepspeed.precision={precision} cannot run on this CPU") and "\n" not in problem
        assert f"use deepspeed=zero{stage}" in problem
        return
    masters, module = got["masters"], got["module"]
    assert results[1][(stage, precision)]["masters"] is None  # rank 0 only
    assert masters.keys() == module.keys()
    assert all(v.dtype == torch.float32 for v in masters.values())
    for name, value in masters.items():
        assert value.shape == module[name].shape, name
        # the module is the masters rounded to the compute dtype (bf16) or the masters themselves (fp32)
        assert torch.equal(value.to(module[name].dtype), module[name]), name
    if precision != "fp32":
        low = DTYPES[precision]
        lost = sum(int((v != v.to(low).float()).sum()) for v in masters.values())
        total = sum(v.numel() for v in masters.values())
        assert lost > total // 2, f"only {lost}/{total} weights carry bits below {precision}: not the masters"
    else:
        assert all(torch.equal(masters[k], module[k]) for k in masters)
