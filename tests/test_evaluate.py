"""Evaluation numbers equal a direct computation: view averaging, top-k, per-class, confusion."""

import numpy as np
import pytest
import torch

from msca.training.evaluation import Predictions, padded_shard, predict, summarize


def test_predict_averages_views_then_ranks():
    torch.manual_seed(0)
    head = torch.nn.Linear(3 * 2 * 2, 5)

    def forward(x):  # (B', T, 3, 2, 2) -> (B', 5)
        return head(x.mean(1).flatten(1))

    videos = torch.randn(4, 6, 3, 3, 2, 2)  # (N, V, T, C, H, W)
    labels = torch.tensor([0, 1, 2, 3])
    loader = [
        {"video": videos[:3], "label": labels[:3], "index": torch.arange(3)},
        {"video": videos[3:], "label": labels[3:], "index": torch.arange(3, 4)},
    ]
    pred = predict(forward, loader, torch.device("cpu"))
    direct = torch.stack([torch.stack([forward(videos[i, v : v + 1])[0] for v in range(6)]).mean(0) for i in range(4)])
    np.testing.assert_allclose(pred.scores, direct.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert pred.indices.tolist() == [0, 1, 2, 3] and pred.labels.tolist() == [0, 1, 2, 3]


def test_summarize_matches_hand_counts():
    scores = np.array(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0: top-1 hit
            [0.5, 0.4, 0.0, 0.0, 0.0, 0.0],  # label 1: top-1 miss (predicts 0), top-5 hit
            [0.0, 0.0, 0.1, 0.2, 0.3, 0.4],  # label 0: miss in top-5? ranks 5,4,3,2,0/1 -> 0 is 5th or 6th
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # label 5: hit
        ]
    )
    labels = np.array([0, 1, 0, 5])
    res = summarize(Predictions(np.arange(4), labels, scores), 6, [f"c{i}" for i in range(6)])
    # row 2: order by score 5,4,3,2 then ties 0,1 (stable) -> class 0 is 5th -> top-5 hit
    assert res["top1"] == 0.5 and res["top5"] == 1.0
    assert res["per_class"]["c0"] == 0.5 and res["per_class"]["c1"] == 0.0 and res["per_class"]["c5"] == 1.0
    assert np.isnan(res["per_class"]["c2"])
    assert res["mean_class_accuracy"] == (0.5 + 0.0 + 1.0) / 3
    cm = np.array(res["confusion"])
    assert cm[0, 0] == 1 and cm[1, 0] == 1 and cm[0, 5] == 1 and cm[5, 5] == 1 and cm.sum() == 4


@pytest.mark.parametrize("n,world", [(3, 2), (7, 4), (1, 3), (8, 2), (0, 2)])
def test_padded_shards_are_equal_and_count_each_video_once(n, world):
    shards = [padded_shard(n, r, world) for r in range(world)]
    assert len({len(idx) for idx, _ in shards}) == 1  # same number of forwards on every rank
    real = sorted(i for idx, k in shards for i in idx[:k])
    assert real == list(range(n))
    assert all(0 <= i < max(n, 1) for idx, _ in shards for i in idx)
