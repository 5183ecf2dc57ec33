"""Resume at another world size or ZeRO stage (msca.runstate.reshard, CheckpointManager's universal path).

Real DeepSpeed engines on real gloo ranks save through CheckpointManager on 2 ranks; other process groups (1 and 4
ranks, other stages) restore through `load_latest`, which converts the step into a DeepSpeed universal checkpoint
once, commits it under the step and loads it: right after the restore the gathered fp32 masters, AdamW moments
and LR equal the checkpoint's. Conversions DeepSpeed cannot do are one line naming the fix; a crash between the
conversion's upload and its manifest leaves nothing a later resume trusts. The end-to-end runs (launch.py, a
stopped run resumed on 1 and on 4 ranks) check the data order and the LR schedule of the whole run."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from launch_helpers import metrics, run_launch, small_overrides

from msca.data.sampler import ResumableDistributedSampler
from msca.runstate.attempts import read_attempts
from msca.runstate.reshard import DIRECT, UNIVERSAL, ReshardError, plan, zero_stage_of
from msca.runtime.dist import free_port
from msca.training.batching import resolve

SAVED_STEP = 3


# ---------------------------------------------------------------------------------------------- fast: the rules
def test_plan_direct_universal_or_one_line():
    assert plan(5, 2, 2, 2, 2) == DIRECT  # same shape: today's bit-exact path
    assert plan(5, 2, 0, 4, 0) == DIRECT  # ZeRO-0 holds the whole optimizer state in one file
    assert plan(5, 2, 2, 1, 2) == plan(5, 2, 1, 4, 2) == plan(5, 2, 2, 2, 1) == plan(5, 2, 3, 4, 3) == UNIVERSAL
    for src, dst in [(2, 3), (3, 1), (0, 2), (2, 0)]:
        with pytest.raises(ReshardError) as err:
            plan(5, 2, src, 1, dst)
        assert f"with ZeRO-{src} on 2 ranks" in str(err.value) and f"deepspeed=zero{src}" in str(err.value)
        assert "\n" not in str(err.value)


def test_zero_stage_of_older_manifests_is_told_by_their_files():
    def files(*names):
        return {"objects": [{"key": f"step_000000001/{n}"} for n in names]}

    assert zero_stage_of({"zero_stage": 1, "objects": []}) == 1
    assert zero_stage_of(files("mp_rank_00_model_states.pt")) == 0
    assert zero_stage_of(files("mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt")) == 2
    assert zero_stage_of(files("zero_pp_rank_0_mp_rank_00_model_states.pt")) == 3


def test_global_batch_fixes_accumulation_at_any_world_size():
    assert resolve(None, 2, 2, 2, None).global_batch == 8  # a first start: batch x accum x ranks
    assert resolve(None, 2, 2, 1, 8).grad_accum == 4  # resumed on 1 rank: the run's recorded global batch
    assert resolve(None, 2, 2, 4, 8).grad_accum == 1
    assert resolve(12, 1, 2, 3, 8).grad_accum == 2  # train.global_batch wins
    with pytest.raises(ValueError, match=r"global batch of 8 clips .* data.batch_size=2 x 3 ranks"):
        resolve(None, 2, 2, 3, 8)


def test_sampler_hands_the_epochs_remaining_global_order_to_the_new_ranks():
    """24 clips, 8 per step: 2 ranks consume 2 steps, then 1, 3 or 4 ranks take the rest. Each step reads the
    same clips as at any other world size, and the epoch is every clip once."""
    n, g = 24, 8

    def step_sets(world, start):
        parts = []
        for r in range(world):
            s = ResumableDistributedSampler(n, r, world, seed=7, epoch_len=n // g * g)
            s.set_epoch(3, start=start)
            parts.append([i for _, i in s])
        per_step = g // world
        steps = len(parts[0]) // per_step
        return [sorted(i for p in parts for i in p[k * per_step : (k + 1) * per_step]) for k in range(steps)]

    reference = step_sets(2, 0)
    for world in (1, 4):
        resumed = step_sets(2, 0)[:2] + step_sets(world, 2 * g)
        assert resumed == reference
        assert sorted(i for step in resumed for i in step) == list(range(n))
    with pytest.raises(ValueError, match="not a multiple of 4"):
        ResumableDistributedSampler(n, 0, 4, epoch_len=24).set_epoch(0, start=6)


# ----------------------------------------------------------------------------- real engines, real gloo ranks
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.GELU(), torch.nn.Linear(24, 4))


def engine_for(stage: int):
    import deepspeed

    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "steps_per_print": 10**9,
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=config)
    return engine


def gathered(engine) -> dict:
    """Collective: every parameter's fp32 master and AdamW moments (whole tensors), and the LR, on every rank."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    out = {"lr": engine.optimizer.param_groups[0]["lr"]}
    for name, p in engine.module.named_parameters():
        out[name] = {
            "fp32": safe_get_full_fp32_param(p).clone(),
            "exp_avg": safe_get_full_optimizer_state(p, "exp_avg").clone(),
            "exp_avg_sq": safe_get_full_optimizer_state(p, "exp_avg_sq").clone(),
        }
    return out


def manager(engine, home: str):
    from msca.runstate.checkpoint import CheckpointManager
    from msca.runstate.home import RunHome

    return CheckpointManager(engine, RunHome(home), background=False)


def save_phase(rank: int, homes: dict) -> dict:
    from msca.runtime import dist

    out = {}
    for stage, home in homes.items():
        engine = engine_for(stage)
        gen = torch.Generator().manual_seed(rank)
        for _ in range(SAVED_STEP):
            engine.backward(engine(torch.randn(2, 16, generator=gen)).pow(2).mean())
            engine.step()
        ckpt = manager(engine, home)
        ckpt.save(SAVED_STEP, {"epoch": 0, "samples": 12, "step": SAVED_STEP, "global_batch": 4})
        ckpt.wait()
        out[stage] = gathered(engine)
        engine.destroy()
        dist.barrier()
    return out


def load_phase(rank: int, cases: list) -> dict:
    """cases: (name, source home, stage, fault): restore into a fresh engine; the outcome per case."""
    from msca.runtime.collective import CollectiveError
    from msca.runtime.failure import FAULT_ENV

    out = {}
    for name, home, stage, fault in cases:
        engine = engine_for(stage)
        os.environ[FAULT_ENV] = fault
        try:
            ckpt = manager(engine, home)
            state = ckpt.load_latest()
            out[name] = {"state": state, "restored_world": ckpt.restored_world, **gathered(engine)}
        except (ValueError, CollectiveError) as err:  # every rank raises the same one line
            out[name] = {"error": f"{type(err).__name__}: {err}"}
        finally:
            committed = Path(home) / "checkpoints" / "step_000000003" / "universal" / "MANIFEST.json"
            out[name]["universal_time"] = json.loads(committed.read_text())["time"] if committed.exists() else None
            os.environ.pop(FAULT_ENV, None)
            engine.destroy()
    return out


def worker(rank: int, world: int, port: int, out_dir: str, phase: str, arg) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from msca.runtime.dist import init_distributed, shutdown

    init_distributed(timeout_s=120)
    result = save_phase(rank, arg) if phase == "save" else load_phase(rank, arg)
    with open(os.path.join(out_dir, f"{phase}-{world}-rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)
    shutdown()


def spawn(world: int, out: Path, phase: str, arg) -> list:
    mp.spawn(worker, args=(world, free_port(), str(out), phase, arg), nprocs=world, join=True)
    return [pickle.loads((out / f"{phase}-{world}-rank{r}.pkl").read_bytes()) for r in range(world)]


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
    """Steps saved on 2 ranks with ZeRO-1, -2 and -3, restored on 1 and on 4 ranks (cases by name)."""
    tmp = tmp_path_factory.mktemp("reshard")
    homes = {stage: str(tmp / f"zero{stage}") for stage in (1, 2, 3)}
    saved = spawn(2, tmp, "save", homes)
    assert saved[0].keys() == {1, 2, 3}
    crash = "committing the universal checkpoint of step_000000003@0"
    one = [
        ("crashed", homes[2], 2, crash),  # dies after the upload, before the manifest
        ("2->1", homes[2], 2, ""),  # converts again: the crashed attempt's objects are not trusted
        ("2->1 again", homes[2], 2, ""),  # reuses that conversion
        ("zero1->zero2", homes[1], 2, ""),
        ("zero3->zero3", homes[3], 3, ""),
        ("zero2->zero3", homes[2], 3, ""),
    ]
    four = [("2->4", homes[2], 2, ""), ("zero3->zero3", homes[3], 3, ""), ("zero2->zero1", homes[2], 1, "")]
    universal = Path(homes[2]) / "checkpoints" / "step_000000003" / "universal"
    results = {1: spawn(1, tmp, "load", one), 4: spawn(4, tmp, "load", four)}
    return saved[0], results, universal


CONVERSIONS = [(1, "2->1", 2), (1, "2->1 again", 2), (1, "zero1->zero2", 1), (1, "zero3->zero3", 3)]
CONVERSIONS += [(4, "2->4", 2), (4, "zero3->zero3", 3), (4, "zero2->zero1", 2)]


@pytest.mark.slow
@pytest.mark.parametrize("world,case,source_stage", CONVERSIONS)
def test_restored_masters_moments_and_lr_equal_the_checkpoints(restored, world, case, source_stage):
    saved, results, _ = restored
    expected = saved[source_stage]
    assert expected["lr"] == pytest.approx(1e-2 / (1 + SAVED_STEP))  # the schedule's state came back too
    for got in results[world]:  # every rank gathers the whole tensors
        got = got[case]
        assert_restored(got, expected)
        assert got["state"] == {"epoch": 0, "samples": 12, "step": SAVED_STEP, "global_batch": 4}
        assert got["restored_world"] == 2


def assert_restored(got: dict, expected: dict) -> None:
    assert "error" not in got, got.get("error")
    assert got["lr"] == expected["lr"]
    for name in (k for k in expected if k != "lr"):
        for kind in ("fp32", "exp_avg", "exp_avg_sq"):
            assert torch.equal(got[name][kind], expected[name][kind]), (name, kind)


@pytest.mark.slow
def test_s3_home_converts_on_node_local_staging(s3_env, tmp_path, monkeypatch):
    """A run home in S3: rank 0 downloads the source shards, converts on its scratch, uploads the conversion
    (every object matching its manifest), and the ranks fetch and load it like any checkpoint."""
    monkeypatch.setenv("MSCA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    home = f"s3://{s3_env.make_bucket()}/runs/x"
    saved = spawn(2, tmp_path, "save", {2: home})[0][2]
    for world in (1, 4):
        for result in spawn(world, tmp_path, "load", [("s3", home, 2, "")]):  # every rank
            assert_restored(result["s3"], saved)
    store = s3_env.store(home).child("checkpoints")
    manifest = json.loads(store.read_text("step_000000003/universal/MANIFEST.json"))
    assert len(manifest["objects"]) > 5
    for obj in manifest["objects"]:
        assert store.size(obj["key"]) == obj["size"]
    assert not list((tmp_path / "scratch").rglob("*.pt"))  # staging cleaned after the restore


@pytest.mark.slow
def test_unsupported_conversion_is_one_line_naming_the_fix(restored):
    _, results, _ = restored
    error = results[1][0]["zero2->zero3"]["error"]
    assert error.startswith("ReshardError: checkpoint step 3 was written with ZeRO-2 on 2 ranks")
    assert "cannot be loaded with ZeRO-3 on 1 ranks" in error and "deepspeed=zero2" in error and "\n" not in error


@pytest.mark.slow
def test_a_crash_before_the_conversions_manifest_is_never_trusted(restored):
    """The crashed attempt failed in one line; the next converted again (its own objects, its own manifest,
    every object matching it) and restored exactly; the one after reused that conversion as committed."""
    _, results, universal = restored
    crashed = results[1][0]["crashed"]["error"]
    assert "committing the universal checkpoint of step_000000003 failed on rank 0" in crashed
    manifest = json.loads((universal / "MANIFEST.json").read_text())
    assert manifest["source_world_size"] == 2 and manifest["source_zero_stage"] == 2
    one = results[1][0]
    assert one["crashed"]["universal_time"] is None  # objects uploaded, never committed
    assert one["2->1"]["universal_time"] == one["2->1 again"]["universal_time"] == manifest["time"]  # reused
    names = {o["key"].split("/universal/", 1)[1] for o in manifest["objects"]}
    assert "mp_rank_00_model_states.pt" in names and "zero/0.weight/exp_avg.pt" in names
    on_disk = {p.relative_to(universal).as_posix() for p in universal.rglob("*") if p.is_file()}
    assert on_disk == names | {"MANIFEST.json"}  # nothing of the crashed attempt left over


@pytest.mark.slow
def test_retention_deletes_a_conversion_with_its_source(restored, tmp_path):
    from msca.runstate.checkpoint import CheckpointManager
    from msca.runstate.home import RunHome

    _, _, universal = restored
    home = tmp_path / "home"
    import shutil

    shutil.copytree(universal.parents[2], home)
    ckpt = CheckpointManager(None, RunHome(str(home)), keep_last=1)
    later = home / "checkpoints" / "step_000000009"
    later.mkdir()
    (later / "MANIFEST.json").write_text(json.dumps({"step": 9, "tag": "step_000000009", "world_size": 2}))
    ckpt._retain(9)
    assert not (home / "checkpoints" / "step_000000003").exists()
    assert ckpt.torn_steps() == [] and ckpt.committed_steps() == [9]


# ------------------------------------------------------------------------- end to end: launch.py, real ranks
# 6 videos x 4 classes = 24 clips, 8 clips per optimizer step (2 ranks x 2 clips x 2 accum) -> 3 steps per epoch
COMMON = [
    "deepspeed=zero2",
    "train.epochs=3",
    "train.val_every=0",
    "eval.at_end=false",
    "data.batch_size=2",
    "train.global_batch=8",
    "checkpoint.every_steps=2",
    "model.drop_path_rate=0.2",
]


def trace(folder: Path, by: str = "epoch") -> dict:
    """{epoch (or step): every dataset index any rank trained on in it} from MSCA_SAMPLE_TRACE's per-rank files."""
    out = {}
    for f in folder.glob("*.jsonl"):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            out.setdefault(r[by], []).extend(r["index"])
    return {k: sorted(v) for k, v in out.items()}


def lr_by_step(store: Path, name: str) -> dict:
    return {m["step"]: m["lr"] for m in metrics(store, name) if m["kind"] == "train"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reshard-runs")
    env = {"MSCA_SAMPLE_TRACE": str(tmp / "trace-full")}
    full = run_launch(small_overrides(tmp, tmp / "data", "full") + COMMON + ["cluster.procs_per_node=2"], env=env)
    assert full.returncode == 0, full.stderr
    return tmp, lr_by_step(tmp / "store", "full")


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 4])
def test_stopped_on_2_ranks_resumed_on_another_number_trains_the_same_run(uninterrupted, world):
    """Stopped mid-epoch 1 (step 4 of 9) on 2 ranks, resumed on `world` ranks: the relaunch says what changed,
    every epoch trains each clip exactly once across all attempts and ranks, the LR of every step is the
    uninterrupted run's, the ledger shows both world sizes, and retention removed the converted step with it."""
    tmp, reference_lr = uninterrupted
    name = f"to{world}"
    env = {"MSCA_SAMPLE_TRACE": str(tmp / f"trace-{name}")}
    overrides = small_overrides(tmp, tmp / "data", name) + COMMON
    part = run_launch(overrides + ["cluster.procs_per_node=2", "train.max_steps=4"], env=env)
    assert part.returncode == 0, part.stderr
    resumed = run_launch(overrides + [f"cluster.procs_per_node={world}"], env=env)
    assert resumed.returncode == 0, resumed.stderr
    said = f"resuming step 4 written by 2 ranks (ZeRO-2) on {world} ranks (ZeRO-2): converting (universal checkpoint)"
    assert said + "; RNG streams restart" in resumed.stderr

    epochs = trace(tmp / f"trace-{name}")
    assert sorted(epochs) == [0, 1, 2]
    for epoch, indices in epochs.items():
        assert sorted(indices) == list(range(24)), epoch  # no clip twice, none missing
    assert trace(tmp / f"trace-{name}", "step") == trace(tmp / "trace-full", "step")  # each step: the same clips
    lr = lr_by_step(tmp / "store", name)
    assert lr == reference_lr and sorted(lr) == list(range(1, 10))

    home = tmp / "store" / "runs" / name
    attempts = read_attempts(_store(home))
    ledger = [(a.world_size, a.restored_step, a.end_reason) for a in attempts]
    assert ledger == [(2, 0, "finished"), (world, 4, "finished")]
    shown = subprocess.run(
        [sys.executable, "-m", "msca.runs", "show", str(home)], capture_output=True, text=True, timeout=120
    ).stdout.splitlines()
    rows = [line.split() for line in shown if line.split()[:1] and line.split()[0] in {a.id for a in attempts}]
    assert [row[4] for row in rows] == ["2", str(world)]  # `msca.runs show`: the ranks column of each attempt
    assert not (home / "checkpoints" / "step_000000004").exists()  # kept 2: the conversion went with its source


def _store(home: Path):
    from msca.storage import open_store

    return open_store(str(home))
