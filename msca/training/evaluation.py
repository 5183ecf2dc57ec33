"""Multi-view evaluation: n clips x crops per video, logits averaged over views, top-1/top-5.

The original averages per-view logits (already averaged over T by the model) and ranks that average;
we do the same, gather every rank's per-video scores, and compute everything from the gathered table so
the numbers do not depend on the number of ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from msca.data import build_loader, to_model_input
from msca.runtime import dist
from msca.runtime.preemption import EvaluationInterrupted


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Each video exactly once across ranks (no padding duplicates, unlike a training sampler)."""
    return list(range(rank, n, world))


def padded_shard(n: int, rank: int, world: int) -> tuple[list[int], int]:
    """(indices, real): this rank's videos, then repeats of them up to the longest shard's length, so every
    rank runs the same number of forward batches (under ZeRO-3 each forward is a collective: a rank that
    stopped early would leave the others waiting). Predictions past `real` are repeats, to be dropped."""
    own = shard_indices(n, rank, world)
    filler = own or [0]  # fewer videos than ranks: a rank without one repeats video 0
    longest = -(-n // world)
    return own + [filler[i % len(filler)] for i in range(longest - len(own))], len(own)


@dataclass
class Predictions:
    indices: np.ndarray  # (N,) dataset indices
    labels: np.ndarray  # (N,)
    scores: np.ndarray  # (N, K) view-averaged logits

    def head(self, n: int) -> "Predictions":
        """The first n predictions (drops a shard's padding repeats)."""
        return Predictions(self.indices[:n], self.labels[:n], self.scores[:n])


@torch.no_grad()
def predict(
    forward, loader, device: torch.device, dtype: torch.dtype = torch.float32, stop: Optional[Callable[[], int]] = None
) -> Predictions:
    """Run `forward` ((B', T, 3, H, W) -> (B', K)) on every batch of views of this rank's videos.
    `stop` (collective: every rank runs the same number of batches) is asked before each batch; a signal number
    ends the evaluation with EvaluationInterrupted, so a stop never waits for a long evaluation."""
    idx, lab, out = [], [], []
    for batch in loader:
        signum = stop() if stop is not None else 0
        if signum:
            raise EvaluationInterrupted(signum)
        ds = getattr(loader, "dataset", None)  # uint8 clips: normalised here, with its mean/std
        mean, std = getattr(ds, "mean", 0.5), getattr(ds, "std", 0.5)
        video = to_model_input(batch["video"], device, dtype, mean, std)  # (B, V, T, 3, H, W)
        b, v = video.shape[:2]
        logits = forward(video.flatten(0, 1)).float()  # (B*V, K)
        out.append(logits.view(b, v, -1).mean(1).cpu())  # (B, K)
        lab.append(batch["label"])
        idx.append(batch["index"])
    if not out:
        return Predictions(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.float32))
    return Predictions(torch.cat(idx).numpy(), torch.cat(lab).numpy(), torch.cat(out).numpy())


def gather(pred: Predictions) -> Predictions:
    """All ranks' predictions, sorted by dataset index, duplicates removed."""
    parts = [p for p in dist.all_gather_object(pred) if len(p.indices)]
    indices = np.concatenate([p.indices for p in parts])
    order = np.unique(indices, return_index=True)[1]
    return Predictions(
        indices[order],
        np.concatenate([p.labels for p in parts])[order],
        np.concatenate([p.scores for p in parts])[order],
    )


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (N, k)
    return (topk == labels[:, None]).any(axis=1)


def summarize(pred: Predictions, num_classes: int, class_names: list[str] | None = None) -> dict:
    """top-1/top-5, mean per-class accuracy and the confusion matrix (rows: true class)."""
    n = len(pred.labels)
    top1 = topk_correct(pred.scores, pred.labels, 1)
    top5 = topk_correct(pred.scores, pred.labels, 5)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (pred.labels, pred.scores.argmax(1)), 1)
    support = confusion.sum(1)
    per_class = [float(confusion[c, c] / support[c]) if support[c] else math.nan for c in range(num_classes)]
    names = class_names or [str(c) for c in range(num_classes)]
    return {
        "num_videos": n,
        "top1": float(top1.mean()) if n else math.nan,
        "top5": float(top5.mean()) if n else math.nan,
        "mean_class_accuracy": float(np.nanmean(per_class)) if n else math.nan,
        "per_class": {names[c]: per_class[c] for c in range(num_classes)},
        "confusion": confusion.tolist(),
        "class_names": names,
    }


def evaluate_dataset(forward, dataset, cfg, device, dtype, stop=None) -> dict:
    """Every rank predicts its shard; everyone gets the summary of all videos. Shards are padded to one
    length so every rank runs the same forwards (collectives under ZeRO-3); the repeats are dropped."""
    idx, real = padded_shard(len(dataset), dist.rank(), dist.world_size())
    loader = build_loader(
        dataset, idx, cfg.data.eval_batch_size, cfg.data.num_workers, pin_memory=torch.cuda.is_available()
    )
    pred = gather(predict(forward, loader, device, dtype, stop=stop).head(real))
    return summarize(pred, dataset.num_classes, getattr(dataset, "class_names", None))
