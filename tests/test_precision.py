"""The precision check's answer for every kind of device DeepSpeed reports, on any machine: the accelerator is
the one object asked, so a stand-in with DeepSpeed's method names shows each branch (the real accelerator's
answer is exercised end to end in test_launch and test_master_weights)."""

import pytest

from msca.runtime.precision import PrecisionUnsupported, check_precision, precision_problem

pytestmark = pytest.mark.slow  # real processes: launch.py, ranks, or clusters


class Accelerator:
    """DeepSpeed's accelerator interface, the three methods the check calls."""

    def __init__(self, name: str, fp16: bool | None, bf16: bool):
        self.name, self.fp16, self.bf16 = name, fp16, bf16

    def device_name(self):
        return self.name

    def is_fp16_supported(self):
        return self.fp16

    def is_bf16_supported(self):
        return self.bf16


def test_fp32_always_runs():
    assert precision_problem("fp32", 3, Accelerator("cpu", None, False)) is None


def test_a_cpu_without_fp16_names_the_option_and_the_configs_that_run():
    problem = precision_problem("fp16", 1, Accelerator("cpu", None, True))  # DeepSpeed's CPU answer: None, not False
    assert problem.startswith("deepspeed.precision=fp16 cannot run on this CPU (")
    assert "no native fp16" in problem and problem.endswith("use deepspeed=zero1 or deepspeed=zero1_bf16")
    assert "\n" not in problem


def test_a_gpu_without_bf16_says_what_it_needs():
    problem = precision_problem("bf16", 2, Accelerator("cuda", True, False))
    assert "compute capability 8.0" in problem and problem.endswith("use deepspeed=zero2 or deepspeed=zero2_fp16")


def test_supported_precisions_pass_and_the_check_raises_a_value_error():
    assert precision_problem("fp16", 2, Accelerator("cuda", True, True)) is None
    assert issubclass(PrecisionUnsupported, ValueError)  # a user error: one line, never retried by Ray


def test_the_check_on_this_machine_agrees_with_deepspeed():
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    for precision, supported in (("fp16", accelerator.is_fp16_supported()), ("bf16", accelerator.is_bf16_supported())):
        if supported:
            check_precision(precision, 2)
        else:
            with pytest.raises(PrecisionUnsupported, match=f"deepspeed.precision={precision}"):
                check_precision(precision, 2)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_rank_on_another_machine_refuses_before_writing(tmp_path, precision):
    """Under SLURM or a Ray cluster the launcher cannot see the ranks' devices: each rank asks its own, right
    after joining the group. A real rank (`python -m jobs train`, the rank environment set by hand as a node
    would): where this CPU cannot run the precision it fails in one line naming the option, and the run home
    gets no lease and no attempt; where it can, the rank trains."""
    import os
    import subprocess
    import sys

    from hydra import compose, initialize_config_dir
    from launch_helpers import REPO, small_overrides

    from msca.config import register_schema
    from msca.runstate.home import RunHome, run_uri
    from msca.runtime.dist import free_port

    register_schema()
    overrides = small_overrides(tmp_path, tmp_path / "data", "p") + [
        f"deepspeed=zero2_{precision}",
        "train.max_steps=1",
        "train.val_every=0",
        "eval.at_end=false",
    ]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    uri = run_uri(cfg.store.root, cfg.run.name)
    RunHome(uri).write_config(cfg)
    env = {
        **os.environ,
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "jobs", "train", uri], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    out = proc.stdout + proc.stderr
    home = tmp_path / "store" / "runs" / "p"
    if precision_problem(precision, 2) is None:
        assert proc.returncode == 0, out
        assert (home / "model.pt").exists()
    else:
        assert proc.returncode == 1, out
        assert "Traceback" not in out
        assert f"PrecisionUnsupported: deepspeed.precision={precision} cannot run on this CPU" in out
        assert sorted(p.name for p in home.iterdir()) == ["config.yaml"]  # no lease, no attempt, no metrics
