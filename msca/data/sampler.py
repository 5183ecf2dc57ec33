"""`ResumableDistributedSampler`: the epoch's order is a function of (seed, epoch) only, so a run resumed at
(epoch, position) on any number of loader workers sees exactly the samples it would have seen.

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
    """Rank r takes `perm[r::world_size]` of an epoch's permutation, cut (drop_last) or padded by wrapping
    (not drop_last) to the same length on every rank; `set_epoch(epoch, start)` skips the first `start` of this
    rank's samples, i.e. resumes mid-epoch."""

    def __init__(
        self,
        dataset_len: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.n, self.rank, self.world_size = int(dataset_len), rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.num_samples = self.n // world_size if drop_last else math.ceil(self.n / world_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch; `start` = this rank's samples already consumed in it (0 <= start <= num_samples)."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} not in [0, {self.num_samples}]")
        self.epoch, self.start = int(epoch), int(start)

    def rank_indices(self, epoch: int) -> np.ndarray:
        """(num_samples,) this rank's dataset indices for a whole epoch."""
        order = epoch_permutation(self.n, self.seed, epoch) if self.shuffle else np.arange(self.n)
        total = self.num_samples * self.world_size
        if total > self.n and self.n > 0:
            order = np.resize(order, total)  # pad by wrapping around (repeats as needed)
        return order[:total][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch = self.epoch
        for i in self.rank_indices(epoch)[self.start :]:
            yield epoch, int(i)

    def __len__(self) -> int:
        return self.num_samples - self.start
