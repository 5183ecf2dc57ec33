"""Which training precisions the devices that run the ranks can compute, asked the way DeepSpeed asks.

DeepSpeed refuses an unsupported precision only inside `deepspeed.initialize` ("Type fp16 is not supported on
your device."), after the run home is written and the ranks have started. Asking its accelerator here lets
`launch.py` refuse at validation, in one line naming the option, and lets a rank on another machine (SLURM,
Ray) refuse the same way before it builds anything.
"""

from __future__ import annotations

import logging
import platform

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(accelerator) -> str:
    if accelerator.device_name() == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"this GPU ({torch.cuda.get_device_name()}, compute capability {major}.{minor})"
    if accelerator.device_name() == "cpu":
        return f"this CPU ({cpu_name()})"
    return f"this {accelerator.device_name()} device"


def why_unsupported(precision: str, accelerator) -> str:
    if accelerator.device_name() == "cpu":  # DeepSpeed's CPU accelerator asks oneDNN
        return "it has no native fp16 (oneDNN reports none: no AVX512-FP16 or AMX-FP16)"
    if accelerator.device_name() == "cuda" and precision == "bf16":
        return "bf16 needs compute capability 8.0 (Ampere) or newer"
    return f"DeepSpeed's {accelerator.device_name()} accelerator reports no {precision}"


def deepspeed_accelerator():
    """DeepSpeed's accelerator for this machine, without its "Setting accelerator to CPU" warning on the
    launcher's terminal (a CPU-only machine is the expected case there, not a problem)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # DeepSpeed's logger resets its own level on import: silence globally
    try:
        from deepspeed.accelerator import get_accelerator  # the import itself asks once, and warns

        return get_accelerator()
    finally:
        logging.disable(previous)


def precision_problem(precision: str, zero_stage: int = 0, accelerator=None) -> str | None:
    """None when the devices here run `precision`; else one line naming the deepspeed option, the device and
    the configs that do run here (same ZeRO stage)."""
    if precision == "fp32":
        return None
    if accelerator is None:
        accelerator = deepspeed_accelerator()
    if accelerator.is_fp16_supported() if precision == "fp16" else accelerator.is_bf16_supported():
        return None
    other = "bf16" if precision == "fp16" else "fp16"
    usable = [f"deepspeed=zero{zero_stage}"]
    if precision_problem(other, zero_stage, accelerator) is None:
        usable.append(f"deepspeed=zero{zero_stage}_{other}")
    return (
        f"deepspeed.precision={precision} cannot run on {describe_device(accelerator)}: "
        f"{why_unsupported(precision, accelerator)}; use {' or '.join(usable)}"
    )


def check_precision(precision: str, zero_stage: int = 0) -> None:
    """Raise PrecisionUnsupported (a ValueError: the user's to fix, never retried) when the devices here cannot
    run `precision`."""
    problem = precision_problem(precision, zero_stage)
    if problem:
        raise PrecisionUnsupported(problem)


class PrecisionUnsupported(ValueError):
    """The configured precision cannot run on this machine's devices."""
