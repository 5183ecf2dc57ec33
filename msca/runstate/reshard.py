"""Loading a checkpoint at another world size or ZeRO stage: which path, and the conversion DeepSpeed offers.

ZeRO-1/2/3 partition the optimizer state by rank, so its files load only at the world size (and stage family)
that wrote them. DeepSpeed's universal checkpoint (`deepspeed.checkpoint.ds_to_universal`) rewrites them as one
file per parameter and state (fp32 master, exp_avg, exp_avg_sq), which an engine with `checkpoint.load_universal`
repartitions for its own ranks. What the installed DeepSpeed (0.19.x) supports, verified on CPU/gloo:
  ZeRO-1/2 -> ZeRO-1/2 at any world size; ZeRO-3 -> ZeRO-3 at any world size. ZeRO-1/2 <-> ZeRO-3 is not
  (a ZeRO-3 engine reads per-rank model-state files a ZeRO-1/2 conversion does not have, and back), and ZeRO-0
  keeps the whole optimizer state in one file that any world size loads directly, but no ZeRO stage converts.
The conversion itself runs in one process (rank 0) and is committed by CheckpointManager under the source
step, so it happens once and retention deletes it with its source.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path

DIRECT, UNIVERSAL = "direct", "universal"
SUBDIR = "universal"  # <tag>/universal/: the conversion's objects and its own MANIFEST.json
_FAMILY = {0: "ZeRO-0", 1: "ZeRO-1/2", 2: "ZeRO-1/2", 3: "ZeRO-3"}
_ZERO3_MODEL = re.compile(r"zero_pp_rank_\d+_mp_rank_\d+_model_states\.pt$")


class ReshardError(ValueError):
    """A checkpoint that this configuration cannot load, and DeepSpeed cannot convert for it."""


def zero_stage_of(manifest: dict) -> int:
    """The ZeRO stage that wrote a checkpoint: recorded in its manifest, or (older manifests) told by its files
    (ZeRO-3 writes per-rank model states; ZeRO-1 and 2 the same optimizer shards, so 2 stands for both)."""
    if isinstance(manifest.get("zero_stage"), int):
        return manifest["zero_stage"]
    names = [o["key"].rsplit("/", 1)[-1] for o in manifest["objects"]]
    if any(_ZERO3_MODEL.search(n) for n in names):
        return 3
    return 2 if any(n.endswith("optim_states.pt") for n in names) else 0


def plan(step: int, src_world: int, src_stage: int, world: int, stage: int) -> str:
    """DIRECT (DeepSpeed loads the files as they are) or UNIVERSAL (convert first); ReshardError when neither."""
    if (src_world, src_stage) == (world, stage) or src_stage == stage == 0:
        return DIRECT
    if _FAMILY[src_stage] == _FAMILY[stage] != "ZeRO-0":
        return UNIVERSAL
    raise ReshardError(
        f"checkpoint step {step} was written with ZeRO-{src_stage} on {src_world} ranks and cannot be loaded with "
        f"ZeRO-{stage} on {world} ranks: DeepSpeed's universal checkpoint converts only within ZeRO-1/2 or within "
        f"ZeRO-3 (ZeRO-0 loads at any world size as it is); relaunch with deepspeed=zero{src_stage} "
        "(run.allow_config_change=true)"
    )


def describe(step: int, src_world: int, src_stage: int, world: int, stage: int, how: str) -> str:
    """The line a resume at another shape prints (never silent: it is a different run of the same optimisation)."""
    return (
        f"resuming step {step} written by {src_world} ranks (ZeRO-{src_stage}) on {world} ranks (ZeRO-{stage}): "
        f"{how}; RNG streams restart"
    )


def convert(source: Path, out: Path) -> None:
    """DeepSpeed checkpoint folder `source` (one tag) -> universal checkpoint folder `out`, in this process (no
    worker pool: the conversion runs on a training node next to its ranks). Its progress prints are swallowed;
    a failure raises with DeepSpeed's own message."""
    from deepspeed.checkpoint.ds_to_universal import main

    args = argparse.Namespace(
        input_folder=str(source),
        output_folder=str(out),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # our engines do not declare universal-checkpoint info: plain data parallel
    )
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        main(args)
