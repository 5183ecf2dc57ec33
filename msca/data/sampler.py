"""`ResumableDistributedSampler`: the epoch's order is a function of (seed, epoch) only, so a run resumed at
(epoch, position) on any number of loader workers, and on any number of ranks, sees exactly the samples it
would have seen. The position counts samples of the epoch's *global* order (all ranks together), so a run
checkpointed on N ranks hands the epoch's remaining order to M ranks: no sample twice, none skipped.

It yields `(epoch, index)` tuples; the dataset seeds each sample's randomness from them, which is what makes
the clips and augmentations themselves replayable.
"""

from __future__ import annotations

import math
from typing import Iterator, Tuple

import numpy as np
from torch.utils.data import Sampler


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """(n,) permutation of range(n), a pure function of (seed, epoch)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, 0x5A3])))
    return rng.permutation(n)


class ResumableDistributedSampler(Sampler):
    """An epoch is the first `epoch_len` entries of its permutation (drop_last: default n // world_size *
    world_size; the trainer passes whole global batches), or the permutation padded by wrapping (not drop_last).
    `set_epoch(epoch, start)` drops the first `start` entries (samples the run consumed, on whatever ranks),
    and rank r takes `remaining[r::world_size]`: with a constant global batch each optimizer step reads the
    same clips at any world size."""

    def __init__(
        self,
        dataset_len: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        epoch_len: int | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.n, self.rank, self.world_size = int(dataset_len), rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        if epoch_len is None:
            epoch_len = self.n // world_size * world_size if drop_last else math.ceil(self.n / world_size) * world_size
        if epoch_len % world_size or (drop_last and epoch_len > self.n):
            raise ValueError(f"an epoch of {epoch_len} samples cannot be split evenly over {world_size} ranks")
        self.epoch_len = int(epoch_len)  # samples in an epoch, all ranks together
        self.num_samples = self.epoch_len // world_size  # this rank's share of a whole epoch
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch; `start` = samples of its global order already consumed, by all ranks together
        (a multiple of the world size, at most epoch_len)."""
        if not 0 <= start <= self.epoch_len or start % self.world_size:
            raise ValueError(f"start {start} is not a multiple of {self.world_size} in [0, {self.epoch_len}]")
        self.epoch, self.start = int(epoch), int(start)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """(epoch_len,) the epoch's dataset indices in global order (all ranks)."""
        order = epoch_permutation(self.n, self.seed, epoch) if self.shuffle else np.arange(self.n)
        if self.epoch_len > self.n and self.n > 0:
            order = np.resize(order, self.epoch_len)  # pad by wrapping around (repeats as needed)
        return order[: self.epoch_len]

    def rank_indices(self, epoch: int, start: int = 0) -> np.ndarray:
        """((epoch_len - start) / world_size,) this rank's dataset indices of the epoch after `start`."""
        return self.epoch_order(epoch)[start:][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch = self.epoch
        for i in self.rank_indices(epoch, self.start):
            yield epoch, int(i)

    def __len__(self) -> int:
        return (self.epoch_len - self.start) // self.world_size
