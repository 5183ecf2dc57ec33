"""`python launch.py` end to end: real processes, real DeepSpeed engines on gloo, the real data pipeline."""

import json

import pytest
import torch
from launch_helpers import metrics, run_launch, small_overrides

from msca.bench.tiny import TINY_MODEL

pytestmark = pytest.mark.slow  # real processes: launch.py, ranks, or clusters


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "synthetic"


@pytest.mark.parametrize("deepspeed,accum", [("zero0", 1), ("zero2_bf16", 1), ("zero2", 2), ("zero0_bf16", 1)])
def test_two_rank_deepspeed_training_learns(tmp_path, data_root, deepspeed, accum):
    name = f"ds-{deepspeed}"
    overrides = small_overrides(tmp_path, data_root, name) + [
        f"deepspeed={deepspeed}",
        f"train.grad_accum={accum}",
        f"data.batch_size={4 // accum}",
        "cluster.procs_per_node=2",
        "train.epochs=4",
        "train.lr=3e-3",
        "train.warmup_epochs=0",
        "train.schedule=constant",
        "train.val_every=0",
        "eval.at_end=false",
    ]
    proc = run_launch(overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train = [m for m in metrics(tmp_path / "store", name) if m["kind"] == "train"]
    losses = [m["loss"] for m in train]
    # 24 clips / 2 ranks = 12 per rank = 3 optimizer steps of 4 clips (as batch x accumulation) per epoch
    assert [m["step"] for m in train] == list(range(1, 13))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first, losses
    home = tmp_path / "store" / "runs" / name
    assert (home / "config.yaml").exists()
    weights = torch.load(home / "model.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in weights.values())
    if deepspeed.endswith("bf16"):  # the optimizer's fp32 masters, not the module's bf16 copies
        assert any(torch.any(v != v.bfloat16().float()) for v in weights.values())


def test_default_job_end_to_end_with_eval_and_relaunch_rules(tmp_path, data_root):
    name = "smoke"
    base = small_overrides(tmp_path, data_root, name) + ["train.epochs=2", "eval.plots=true"]
    proc = run_launch(base)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    home = tmp_path / "store" / "runs" / name
    res = json.loads((home / "results.json").read_text())
    assert res["num_videos"] == 8 and 0.0 <= res["top1"] <= 1.0 and res["top5"] == 1.0  # 4 classes: top-5 is all
    assert (home / "confusion.png").stat().st_size > 0 and (home / "curves.png").stat().st_size > 0
    val = [m for m in metrics(tmp_path / "store", name) if m["kind"] == "val"]
    assert [v["epoch"] for v in val] == [1, 2]
    assert "top-1" in proc.stdout and str(home) in proc.stdout
    launches = json.loads((home / "launch.json").read_text())
    assert len(launches) == 1 and launches[0]["resumed"] is False

    # A different config for an existing name is refused, naming the key; nothing is overwritten.
    before = (home / "config.yaml").read_text()
    proc = run_launch(base + ["train.lr=0.5"])
    assert proc.returncode == 2
    assert "train.lr" in proc.stderr and "allow_config_change" in proc.stderr
    assert (home / "config.yaml").read_text() == before

    # Re-launching the same name resumes: the finished run is not trained again.
    proc = run_launch(base)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train_steps = [m["step"] for m in metrics(tmp_path / "store", name) if m["kind"] == "train"]
    assert train_steps == sorted(set(train_steps)), "steps were trained twice"
    assert json.loads((home / "launch.json").read_text())[-1]["resumed"] is True

    # The evaluate job re-tests the final weights, here with more views than training-time settings.
    proc = run_launch(base + ["run.job=evaluate", "data.test_clips=2", "data.test_crops=3"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    again = json.loads((home / "results.json").read_text())
    assert again["views"] == "2x3" and again["num_videos"] == 8


@pytest.mark.parametrize(
    "override,needle",
    [
        ("train.lrr=1", "lrr"),
        ("deepspeed.precision=fp8", "deepspeed.precision"),
        ("model=nope", "nope"),
    ],
)
def test_bad_override_is_a_short_error(tmp_path, override, needle):
    proc = run_launch([f"store.root={tmp_path}", override], timeout=60)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_pretrained_npz_initialises_the_job_model(tmp_path, data_root):
    """model.pretrained=<jax .npz> reaches every rank: weights land transformed, the position grid is resampled
    (npz made for 48 px, model at 32 px), the head starts at zero (lr ~0 so one step leaves them in place)."""
    import io

    import numpy as np
    import torch

    from msca.model import create_model, npz_layout

    src = create_model("msca_b16", num_classes=4, img_size=48, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in npz_layout(src, with_head=True).items()}
    npz = tmp_path / "vit_tiny_in21k.npz"
    np.savez(npz, **arrays)
    name = "pretrained"
    proc = run_launch(
        small_overrides(tmp_path, data_root, name)
        + [
            f"model.pretrained={npz}",
            "train.max_steps=1",
            "train.optimizer=sgd",
            "train.lr=1e-12",
            "train.momentum=0",
            "train.val_every=0",
            "eval.at_end=false",
        ]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sd = torch.load(io.BytesIO((tmp_path / "store" / "runs" / name / "model.pt").read_bytes()), weights_only=True)
    want = torch.from_numpy(arrays["embedding/kernel"]).permute(3, 2, 0, 1)
    torch.testing.assert_close(sd["patch_embed.proj.weight"], want, rtol=0, atol=1e-6)
    q = arrays["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel"].reshape(32, 32).T
    torch.testing.assert_close(sd["blocks.1.attn.qkv.weight"][:32], torch.from_numpy(q), rtol=0, atol=1e-6)
    assert sd["pos_embed"].shape == (1, 1 + 4 * 4, 32)
    torch.testing.assert_close(
        sd["pos_embed"][0, 0], torch.from_numpy(arrays["Transformer/posembed_input/pos_embedding"][0, 0])
    )
    assert sd["head.weight"].abs().max() < 1e-6 and sd["head.bias"].abs().max() < 1e-6


def make_k400(root, frame_format="img_{:05d}.jpg"):
    """A tiny Kinetics-layout tree: 3 classes x 4 train videos, 1 val video each, 40 frames of 40x52 px."""
    from msca.data.config import SyntheticConfig
    from msca.data.synthetic import generate
    from msca.storage import open_store

    generate(
        open_store(str(root)),
        SyntheticConfig(classes=3, videos_per_class=4, val_videos_per_class=1, frames=40, height=40, width=52),
        frame_format=frame_format,
    )
    return root


def k400_overrides(tmp_path, root, name):
    return [
        f"store.root={tmp_path / 'store'}",
        f"run.name={name}",
        "data=k400",
        f"data.root={root}",
        "data.crop_size=32",
        "data.train_short_side=[36,44]",
        "data.test_short_side=36",
        "data.batch_size=2",
        "data.eval_batch_size=2",
        "data.num_workers=0",
        "train.progress=false",
        "eval.plots=false",
        *TINY_MODEL,
    ]


def assert_one_line_error(proc, *needles):
    """Exit 2, one line on stderr naming what to fix, no traceback anywhere."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_failing_ranks_fail_the_launch_and_a_never_trained_run_keeps_no_lock(tmp_path):
    """Frames missing from every train video but the first (which the launch check reads): both ranks stop
    with BadDataError before a step; launch exits non-zero and says so. That run never committed a step, so
    a relaunch with a different (corrected) config is accepted and replaces config.yaml."""
    root = make_k400(tmp_path / "k400")
    train = (root / "trainValTest" / "train.txt").read_text().splitlines()
    for line in train[1:]:
        for frame in (root / line.split(",")[0]).iterdir():
            frame.unlink()
    base = k400_overrides(tmp_path, root, "broken") + [
        "cluster.procs_per_node=2",
        "train.max_steps=1",
        "train.val_every=0",
        "eval.at_end=false",
    ]
    proc = run_launch(base, timeout=120)
    assert proc.returncode not in (0, 2), proc.stdout + proc.stderr
    assert "run broken failed" in proc.stdout and "BadDataError" in proc.stderr
    home = tmp_path / "store" / "runs" / "broken"
    assert "max_bad_fraction: 0.01" in (home / "config.yaml").read_text()

    proc = run_launch(base + ["data.max_bad_fraction=1.0"], timeout=120)
    assert "different config" not in proc.stderr
    assert "never committed a step" in proc.stdout and "data.max_bad_fraction" in proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "max_bad_fraction: 1.0" in (home / "config.yaml").read_text()


@pytest.mark.parametrize(
    "override,needle",
    [
        ("cluster.procs_per_node=-2", "cluster.procs_per_node=-2"),
        ("data.batch_size=0", "data.batch_size=0"),
        ("checkpoint.every_steps=-1", "checkpoint.every_steps=-1"),
        ("train.max_steps=-5", "train.max_steps=-5"),
        ("data.num_workers=-1", "data.num_workers=-1"),
        ("data.crop_size=30", "data.crop_size=30"),
        ("data.test_clips=0", "data.test_clips=0"),
        ("data=k400 data.synthetic.classes=3", "data.synthetic.classes: data=k400"),
    ],
)
def test_bad_values_are_one_line_and_write_nothing(tmp_path, override, needle):
    proc = run_launch([f"store.root={tmp_path / 'store'}", "run.name=bad", *override.split()], timeout=60)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "store").exists()


def test_bad_data_is_one_line_and_writes_nothing(tmp_path):
    """A missing data.root, a label past the class list (named by file:line) and an unreadable or missing first
    frame fail at launch, before config.yaml or launch.json exist, so the corrected relaunch is not refused."""
    root = make_k400(tmp_path / "k400")
    base = k400_overrides(tmp_path, root, "k400-bad") + ["train.max_steps=1", "train.val_every=0", "eval.at_end=false"]
    proc = run_launch(base + [f"data.root={tmp_path / 'no-such-k400'}"], timeout=60)
    assert_one_line_error(proc, "data.root=", "no-such-k400")
    assert not (tmp_path / "store").exists()

    listing = root / "trainValTest" / "train.txt"
    good = listing.read_text()
    lines = good.splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0] + ",7"  # 3 classes (class folders): label 7 is out of range
    listing.write_text("\n".join(lines) + "\n")
    proc = run_launch(base, timeout=60)
    assert_one_line_error(proc, f"{listing}:5", "label 7", "3 classes")
    listing.write_text(good)

    first = root / good.split(",")[0] / "img_00001.jpg"
    first.write_bytes(b"not a jpeg")
    proc = run_launch(base, timeout=60)
    assert_one_line_error(proc, str(first), f"{listing}:1")
    first.unlink()
    proc = run_launch(base, timeout=60)
    assert_one_line_error(proc, str(first), "does not exist", "data.frame_format")
    assert not (tmp_path / "store").exists()

    # run.check_data=false (data visible only to compute nodes): the job starts and its rank names the cause
    proc = run_launch(base + [f"data.root={tmp_path / 'no-such-k400'}", "run.check_data=false"], timeout=120)
    assert proc.returncode not in (0, 2) and "run k400-bad failed" in proc.stdout
    assert "train list not found" in proc.stderr and "no-such-k400" in proc.stderr


def test_k400_layout_with_tokshift_lists_and_msca_frame_names(tmp_path):
    """data=k400 on a Kinetics-layout tree: space-separated TokShift list files, `{:06d}.jpg` frames (the MSCA
    config's naming), videos shorter than the 8x32 span (clip indices wrap around, as the original)."""
    root = make_k400(tmp_path / "k400", frame_format="{:06d}.jpg")
    for split in ("train", "val"):  # rewrite the comma lists in TokShift's space-separated form
        path = root / "trainValTest" / f"{split}.txt"
        path.write_text(path.read_text().replace(",", " "))
    proc = run_launch(
        [
            f"store.root={tmp_path / 'store'}",
            "run.name=k400-mini",
            "data=k400",
            f"data.root={root}",
            "data.frame_format=%06d.jpg",
            "data.crop_size=32",
            "data.train_short_side=[36,44]",
            "data.test_short_side=36",
            "data.batch_size=2",
            "data.eval_batch_size=2",
            "data.num_workers=0",
            "data.test_clips=2",
            "train.epochs=1",
            "train.progress=false",
            "eval.plots=false",
            *TINY_MODEL,
        ]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads((tmp_path / "store" / "runs" / "k400-mini" / "results.json").read_text())
    assert res["num_videos"] == 3 and res["views"] == "2x3"
    assert len(res["class_names"]) == 3


def test_zero3_evaluation_with_unequal_shards_finishes(tmp_path):
    """ZeRO-3 with every parameter partitioned and released after use: each forward is a collective, so
    both ranks must run the same number of eval batches. 3 videos on 2 ranks, one per batch: rank 1 pads its
    shard with a repeat; every video is counted exactly once, in validation and in the final test."""
    name = "zero3-eval"
    overrides = small_overrides(tmp_path, tmp_path / "data", name) + [
        "deepspeed=zero3_bf16",
        "+deepspeed.extra.zero_optimization.stage3_param_persistence_threshold=0",
        "+deepspeed.extra.zero_optimization.stage3_max_reuse_distance=0",  # else params stay gathered after use
        "cluster.procs_per_node=2",
        "data.synthetic.classes=3",
        "data.synthetic.val_videos_per_class=1",
        "data.eval_batch_size=1",
        "train.epochs=1",
    ]
    proc = run_launch(overrides, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    home = tmp_path / "store" / "runs" / name
    res = json.loads((home / "results.json").read_text())
    assert res["num_videos"] == 3 and sum(map(sum, res["confusion"])) == 3
    val = [m for m in metrics(tmp_path / "store", name) if m["kind"] == "val"]
    assert [v["num_videos"] for v in val] == [3]
    weights = torch.load(home / "model.pt", weights_only=True)  # gathered from the partitions, fp32 masters
    assert weights["pos_embed"].shape == (1, 1 + 4 * 4, 32)
    assert any(torch.any(v != v.bfloat16().float()) for v in weights.values())


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_precision_is_refused_at_launch_where_the_cpu_cannot_run_it(tmp_path, data_root, precision):
    """Asked the way DeepSpeed asks (its accelerator): where this CPU runs the precision, a short 2-rank run
    trains in it; where it cannot, launch.py refuses in one line naming the option, before anything is written
    (DeepSpeed itself would refuse only inside a started rank)."""
    from msca.runtime.precision import precision_problem

    overrides = small_overrides(tmp_path, data_root, f"p-{precision}") + [
        f"deepspeed=zero2_{precision}",
        "cluster.procs_per_node=2",
        "train.max_steps=2",
        "train.val_every=0",
        "eval.at_end=false",
    ]
    proc = run_launch(overrides, timeout=180)
    problem = precision_problem(precision, 2)
    if problem is None:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        steps = [m["step"] for m in metrics(tmp_path / "store", f"p-{precision}") if m["kind"] == "train"]
        assert steps == [1, 2]
    else:
        assert_one_line_error(proc, f"deepspeed.precision={precision} cannot run on this CPU")
        assert "use deepspeed=zero2" in proc.stderr
        assert not (tmp_path / "store").exists()


def test_a_key_of_another_backend_is_one_line_naming_the_backend_that_has_it(tmp_path):
    """`cluster.num_workers=3` under the local backend used to run one local rank and say nothing."""
    proc = run_launch(
        [f"store.root={tmp_path / 'store'}", "run.name=bad", "cluster.num_workers=3", "cluster.partition=gpu"],
        timeout=60,
    )
    assert_one_line_error(proc, "cluster.num_workers is a cluster=ray option; cluster=local has no such key")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    "backend,lines",
    [
        (
            "local",
            [
                "# cluster=local: 2 rank process(es) on this machine",
                "RANK=0 LOCAL_RANK=0 WORLD_SIZE=2",
                "RANK=1 LOCAL_RANK=1 WORLD_SIZE=2",
                "-m jobs train ",
            ],
        ),
        (
            "ray",
            [
                "# cluster=ray: nothing is started",
                '"num_workers": 2',
                '"placement_strategy": "SPREAD"',
                '"trainer": "ray.train.torch.TorchTrainer"',
            ],
        ),
        (
            "ray-jobs",
            [
                "# cluster=ray (Jobs API): nothing is submitted",
                '"address": "http://127.0.0.1:9"',
                "cluster.address=auto cluster.wait=true run.name=dry",
                '"working_dir": ',
            ],
        ),
    ],
)
def test_every_backend_has_a_dry_run_that_writes_and_starts_nothing(tmp_path, backend, lines):
    """What the backend would start, printed; no run home, no rank, no Ray (the Jobs API address is not even
    contacted), no secret (a credential in this shell is shown as <set>)."""
    extra = {
        "local": ["cluster.procs_per_node=2"],
        "ray": ["cluster=ray", "cluster.num_workers=2", "cluster.placement_strategy=SPREAD"],
        "ray-jobs": ["cluster=ray", "cluster.address=http://127.0.0.1:9"],
    }[backend]
    proc = run_launch(
        small_overrides(tmp_path, tmp_path / "data", "dry") + extra + ["cluster.dry_run=true"],
        env={"AWS_SECRET_ACCESS_KEY": "s3cr3t-value"},
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for line in lines:
        assert line in out, out
    assert "s3cr3t-value" not in out
    assert not (tmp_path / "store").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("forward", [False, True])
def test_ray_forwards_store_credentials_only_when_asked(tmp_path, forward):
    """Ray keeps a job's runtime_env in its records (dashboard, `ray job list`): this shell's S3 credentials stay
    out of it unless cluster.forward_credentials=true (then the dry run shows them as <set>); the endpoint and
    msca's timeouts are forwarded either way."""
    proc = run_launch(
        small_overrides(tmp_path, tmp_path / "data", "dry")
        + ["cluster=ray", "cluster.address=http://127.0.0.1:9", "cluster.dry_run=true"]
        + [f"cluster.forward_credentials={str(forward).lower()}"],
        env={
            "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
            "MSCA_S3_ENDPOINT": "http://s3:1",
        },
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert '"MSCA_S3_ENDPOINT": "http://s3:1"' in out and "s3cr3t-value" not in out
    assert ('"AWS_SECRET_ACCESS_KEY": "<set>"' in out) is forward, out
    assert ('"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"' in out) is forward, out
