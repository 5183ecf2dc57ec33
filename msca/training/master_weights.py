"""The fp32 master weights of a DeepSpeed engine as one state dict, whatever the precision and ZeRO stage.

In bf16/fp16 runs the module's parameters are rounded copies of the fp32 masters that the optimizer updates
(partitioned across ranks under ZeRO-1/2/3); final weights taken from the module would lose those low bits.
Which object holds the masters depends on the configuration:
  * ZeRO-1/2/3, and ZeRO-0 with DeepSpeed's BF16_Optimizer: DeepSpeed links each parameter to its fp32
    fragment; `deepspeed.utils.safe_get_full_fp32_param` assembles it (a collective).
  * ZeRO-0 with bf16/fp16 and a torch optimizer: FP16_UnfusedOptimizer keeps one fp32 clone per parameter
    (FP16_Optimizer, with fused Adam, one flat fp32 buffer per group); no link exists, so we pair them here.
  * fp32 without ZeRO: the module's parameters are the masters.
"""

from __future__ import annotations

import contextlib

import torch

from msca.runtime import dist


def unlinked_masters(optimizer) -> dict[int, torch.Tensor]:
    """id(low-precision param) -> fp32 master, for DeepSpeed's ZeRO-0 fp16/bf16 optimizers (no hp link)."""
    from deepspeed.runtime.fp16.fused_optimizer import FP16_Optimizer
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
    from torch._utils import _unflatten_dense_tensors

    if isinstance(optimizer, FP16_UnfusedOptimizer):
        return {
            id(lp): hp for lps, hps in zip(optimizer.fp16_groups, optimizer.fp32_groups) for lp, hp in zip(lps, hps)
        }
    if isinstance(optimizer, FP16_Optimizer):
        return {
            id(lp): hp
            for lps, flat in zip(optimizer.fp16_groups, optimizer.fp32_groups_flat)
            for lp, hp in zip(lps, _unflatten_dense_tensors(flat, lps))
        }
    return {}


def master(param: torch.nn.Parameter, unlinked: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """The fp32 master of one parameter, or None when the module holds it (fp32 runs, frozen parameters).
    Collective under ZeRO: every rank calls it for the same parameters in the same order."""
    from deepspeed.utils import safe_get_full_fp32_param

    full = safe_get_full_fp32_param(param)
    return full if full is not None else unlinked.get(id(param))


def fp32_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """Collective: the module's state dict (timm names) with every parameter replaced by its fp32 master,
    on rank 0 (None elsewhere). Buffers and parameters without a master come from the module (gathered
    under ZeRO-3)."""
    import deepspeed

    module = engine.module
    unlinked = unlinked_masters(engine.optimizer)
    masters = {}
    for name, param in module.named_parameters():
        value = master(param, unlinked)
        if value is not None and dist.is_main():
            masters[name] = value.detach().float().cpu().clone()
    zero3 = any(hasattr(p, "ds_id") for p in module.parameters())
    gather = deepspeed.zero.GatheredParameters(list(module.parameters())) if zero3 else contextlib.nullcontext()
    with gather:
        if not dist.is_main():
            return None
        sd = {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
    sd.update((k, v) for k, v in masters.items() if k in sd)
    return sd
