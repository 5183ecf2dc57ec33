"""The run's optimisation in global units: clips per optimizer step (the global batch) is fixed for the life of a
run, whatever the world size, and gradient accumulation is derived from it. Steps per epoch, the LR schedule and
`total_steps` then depend on samples only, so a run resumed on another number of ranks continues the same
optimisation (only the RNG streams differ).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Batching:
    global_batch: int  # clips per optimizer step, all ranks together
    batch_size: int  # clips per micro-batch per rank (data.batch_size)
    world_size: int
    grad_accum: int  # micro-batches per optimizer step on each rank

    @property
    def micro_clips(self) -> int:
        """Clips one micro-step consumes, all ranks together."""
        return self.batch_size * self.world_size


def resolve(global_batch: int | None, grad_accum: int, batch_size: int, world_size: int, recorded: int | None):
    """The run's Batching. `global_batch`: train.global_batch (None: the run's recorded one, from its newest
    checkpoint, else data.batch_size x train.grad_accum x world_size of this, its first, start)."""
    if global_batch is None:
        global_batch, source = (recorded, "the run's checkpoints") if recorded else (None, "")
    else:
        source = "train.global_batch"
    if global_batch is None:
        return Batching(batch_size * grad_accum * world_size, batch_size, world_size, grad_accum)
    per_step = batch_size * world_size
    if global_batch % per_step:
        raise ValueError(
            f"the global batch of {global_batch} clips per optimizer step ({source}) is not a multiple of "
            f"data.batch_size={batch_size} x {world_size} ranks: relaunch on a number of ranks that divides "
            f"{global_batch}/data.batch_size, or pick a data.batch_size that divides {global_batch}/ranks "
            "(run.allow_config_change=true)"
        )
    return Batching(global_batch, batch_size, world_size, global_batch // per_step)
