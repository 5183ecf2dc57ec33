"""Every config option composes against the schema; typos, wrong types and bad values fail with the key named."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from msca.config import register_schema, validate
from msca.training.optim import deepspeed_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
register_schema()


def options(group: str) -> list[str]:
    return sorted(p.relative_to(CONFIGS / group).with_suffix("").as_posix() for p in (CONFIGS / group).rglob("*.yaml"))


def make(overrides=()):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_default_composes_and_validates():
    cfg = make()
    validate(cfg)
    assert cfg.model.arch == "msca_b16" and cfg.model.shift == "kv"
    assert cfg.model.img_size == cfg.data.crop_size and cfg.model.num_frames == cfg.data.num_frames
    assert cfg.data.synthetic.classes >= 2
    assert cfg.run.name.endswith("-msca_tiny")


@pytest.mark.parametrize("group", ["cluster", "model", "data", "deepspeed", "store", "experiment"])
def test_every_option_composes(group):
    for option in options(group):
        cfg = make([f"{group}={option}"])
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        validate(cfg)


def test_k400_experiment_is_the_original_recipe():
    cfg = make(["experiment=k400_msca_b16_8x32"])
    t = cfg.train
    assert (t.optimizer, t.lr, t.momentum, t.weight_decay, t.epochs) == ("sgd", 0.1, 0.9, 0.0, 18)
    assert (t.schedule, list(t.milestones), t.gamma, t.grad_accum, t.clip_grad, t.label_smoothing) == (
        "step",
        [10, 15],
        0.1,
        10,
        1.0,
        0.1,
    )
    assert (cfg.data.num_frames, cfg.data.stride, cfg.data.test_clips, cfg.data.test_crops) == (8, 32, 10, 3)
    assert cfg.model.arch == "msca_b16" and cfg.model.pretrained.endswith(".npz")
    for twin, arch in (("vit", "vit_b16"), ("tokenshift", "tokenshift_b16")):
        other = make([f"experiment=k400_{twin}_b16_8x32"])
        assert other.model.arch == arch and other.train == cfg.train


def test_deepspeed_json_states_batch_once():
    cfg = make(
        ["deepspeed=zero2_bf16", "data.batch_size=3", "train.grad_accum=4", "+deepspeed.extra.steps_per_print=7"]
    )
    ds = deepspeed_config(cfg)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 4
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["steps_per_print"] == 7


@pytest.mark.parametrize(
    "override,needle",
    [
        ("train.lrr=0.1", "lrr"),  # typo in a key
        ("train.epochs=many", "train.epochs"),  # wrong type
        ("model=msca_b17", "msca_b17"),  # unknown group option
    ],
)
def test_bad_overrides_fail_at_compose_time(override, needle):
    with pytest.raises(ConfigCompositionException) as err:
        make([override])
    assert needle in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize(
    "override,needle",
    [
        ("deepspeed.precision=fp8", "deepspeed.precision"),
        ("train.optimizer=lamb", "train.optimizer"),
        ("train.grad_accum=0", "train.grad_accum"),
        ("cluster.procs_per_node=-2", r"cluster\.procs_per_node=-2 must be >= 0"),
        ("cluster=slurm cluster.nodes=0", "cluster.nodes"),
        ("cluster=ray cluster.num_workers=0", r"cluster\.num_workers=0 must be >= 1"),
        ("cluster=ray cluster.placement_strategy=EVERYWHERE", "cluster.placement_strategy='EVERYWHERE' is not one of"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.eval_batch_size=0", "data.eval_batch_size"),
        ("data.num_workers=-1", "data.num_workers"),
        ("data.io_workers=0", "data.io_workers"),
        ("data.val_clips=0", "data.val_clips"),
        ("data.test_crops=0", "data.test_crops"),
        ("data.max_bad_fraction=1.5", "data.max_bad_fraction"),
        ("data.crop_size=0", "data.crop_size"),
        ("data.crop_size=30", "data.crop_size=30 must be a multiple of the patch size"),
        ("data.train_short_side=[20,40]", "data.train_short_side"),
        ("data.train_short_side=[40,40]", "data.train_short_side"),
        ("data.test_short_side=20", "data.test_short_side"),
        ("data.synthetic.classes=0", "data.synthetic.classes"),
        ("data.synthetic.quality=0", "data.synthetic.quality"),
        ("data.synthetic.kind=zoom", "data.synthetic.kind"),
        ("checkpoint.every_steps=-1", "checkpoint.every_steps"),
        ("checkpoint.keep_last=-1", "checkpoint.keep_last"),
        ("train.max_steps=-1", "train.max_steps"),
        ("train.log_every=0", "train.log_every"),
        ("train.momentum=1.0", "train.momentum"),
        ("train.betas=[0.9,1.0]", r"train\.betas\[1\]"),
        ("train.milestones=[3,-1]", r"train\.milestones\[1\]"),
        ("train.min_lr=1.0", "train.min_lr"),
        ("model.num_heads=5", "model.embed_dim=96 must be a multiple of model.num_heads=5"),
        ("model.shift_div=1", "model.shift_div"),
        ("model.drop_path_rate=1.0", "model.drop_path_rate"),
        ("cluster.master_port=70000", "cluster.master_port"),
        ("eval.crops=0", "eval.crops"),
    ],
)
def test_bad_values_fail_validation(override, needle):
    with pytest.raises(ValueError, match=needle):
        validate(make(override.split()))


@pytest.mark.parametrize(
    "override",
    [
        "checkpoint.keep_last=0",
        "cluster=ray cluster.max_failures=-1",
        "train.max_steps=0",
        "data.num_workers=0",
        "cluster.procs_per_node=0",
        "train.val_every=0",
    ],
)
def test_meaningful_zeros_and_minus_ones_pass(override):
    validate(make(override.split()))  # keep all checkpoints; Ray retries forever; no cap; main-process loading; ...


@pytest.mark.parametrize(
    "backend,key,owner",
    [
        ("local", "num_workers", "ray"),
        ("local", "partition", "slurm"),
        ("ray", "procs_per_node", "local"),
        ("slurm", "address", "ray"),
    ],
)
def test_a_key_of_another_backend_is_refused_naming_its_owner(backend, key, owner):
    """Each backend has its own schema: a key it lacks fails at compose time, and the launcher's line names the
    backend that has it (launch.py turns Hydra's three lines into this one)."""
    from msca.cluster.schema import foreign_key_error

    with pytest.raises(ConfigCompositionException):
        make([f"cluster={backend}", f"cluster.{key}=1"])
    line = foreign_key_error(backend, key)
    assert line.startswith(f"cluster.{key} is a cluster={owner} option; cluster={backend} has no such key")
    assert foreign_key_error(backend, "no_such_key") is None and foreign_key_error(owner, key) is None


@pytest.mark.parametrize("backend", ["local", "slurm", "ray"])
def test_each_backend_config_is_typed_by_its_own_schema(backend):
    from msca.cluster.schema import SCHEMAS, keys

    cluster = make([f"cluster={backend}"]).cluster
    assert OmegaConf.get_type(cluster) is SCHEMAS[backend]
    assert set(cluster.keys()) == keys(backend) and cluster.backend == backend
