"""DataLoader assembly: a deterministic collate and single-threaded workers.

Workers are persistent (no re-fork each epoch; the sampler carries the epoch in every item) and use one torch
thread each, so N workers use N cores instead of N x cores.
"""

from __future__ import annotations

from typing import List

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from msca.storage import worker_context


def collate_clips(samples: List[dict]) -> dict:
    """video stacked (B, ...) float32; label, index, bad_frames, skipped as (B,) LongTensors."""
    return {
        "video": torch.stack([s["video"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        "bad_frames": torch.tensor([s.get("bad_frames", 0) for s in samples], dtype=torch.long),
        "skipped": torch.tensor([s.get("skipped", 0) for s in samples], dtype=torch.long),
    }


def worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


class ReadAheadBatchSampler(Sampler):
    """Batches of `sampler`; before handing out batch k it asks the dataset to start fetching batch k+1.

    Used when loading in the main process (num_workers=0), where nothing else overlaps storage latency with
    decoding. With workers, the DataLoader's own prefetching across workers does that job.
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool, dataset, depth: int = 1):
        self.batches = BatchSampler(sampler, batch_size, drop_last)
        self.dataset, self.depth = dataset, depth

    def __iter__(self):
        it = iter(self.batches)
        ahead = []
        for b in it:
            ahead.append(b)
            if len(ahead) > self.depth:
                break
        for b in ahead[1:]:
            self.dataset.prefetch(b)
        while ahead:
            cur = ahead.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                self.dataset.prefetch(nxt)
                ahead.append(nxt)
            yield cur

    def __len__(self) -> int:
        return len(self.batches)


def build_loader(
    dataset: Dataset,
    sampler: Sampler,
    batch_size: int,
    num_workers: int,
    drop_last: bool = False,
    pin_memory: bool = False,
    read_ahead: int = 1,
) -> DataLoader:
    """Batches of `collate_clips` over `sampler` (e.g. `ResumableDistributedSampler`).

    The loader gets a private generator: every new iterator draws a worker base seed, and from the global
    torch RNG that draw would shift the training stream (dropout, drop-path) differently in a resumed run
    than in an uninterrupted one. Our samples never use that seed (their randomness is (seed, epoch, index))."""
    generator = torch.Generator().manual_seed(0)
    if num_workers > 0:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate_clips,
            pin_memory=pin_memory,
            drop_last=drop_last,
            persistent_workers=True,
            worker_init_fn=worker_init,
            prefetch_factor=2,
            generator=generator,
            multiprocessing_context=worker_context(),  # spawn once obstore runs here (it cannot be forked)
        )
    if hasattr(dataset, "prefetch"):
        batches = ReadAheadBatchSampler(sampler, batch_size, drop_last, dataset, read_ahead)
        return DataLoader(
            dataset, batch_sampler=batches, collate_fn=collate_clips, pin_memory=pin_memory, generator=generator
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_clips,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
    )
