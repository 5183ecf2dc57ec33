"""Clip indices equal the original's formulas (msca.md §4), including short videos that wrap around."""

import numpy as np
import pytest

from msca.data.sampling import (
    dense_test_indices,
    dense_train_indices,
    dense_train_start,
    eval_indices,
    sample_rng,
    uniform_test_indices,
    uniform_train_indices,
)


def original_read_random_clip(F, T, S, randint):
    """The original's train formula, verbatim in structure (randint: numpy's, upper bound exclusive)."""
    max_bound = max(F - T * S + 1, 1)
    st = 0 if max_bound == 1 else randint(0, max_bound - 1)
    return [(i * S + st) % F + 1 for i in range(T)]


def original_read_clip(F, T, S, n):
    max_bound = max(F - T * S + 1, 1)
    tick = F / n
    out = []
    for k in range(n):
        st = 0 if max_bound == 1 else int(np.clip(int(k * tick), 0, max_bound))
        out.append([(i * S + st) % F + 1 for i in range(T)])
    return out


FRAME_COUNTS = [1, 2, 7, 8, 31, 100, 255, 256, 257, 258, 300, 301, 1000]


@pytest.mark.parametrize("F", FRAME_COUNTS)
def test_dense_train_matches_original(F):
    for seed in range(20):
        a = dense_train_indices(F, 8, 32, sample_rng(seed, 0, 0, 0))
        # replay the same draw through the original's code path
        rng = sample_rng(seed, 0, 0, 0)
        b = original_read_random_clip(F, 8, 32, lambda lo, hi, rng=rng: int(rng.integers(lo, hi)))
        assert a.tolist() == b
        assert all(1 <= i <= F for i in a)


def test_dense_train_start_range_and_wraparound():
    # F=300: max_bound=45, starts in [0, 43] (the last valid start, 44, is never drawn: the original's quirk)
    starts = {dense_train_start(300, 8, 32, sample_rng(s, 0, 0, 0)) for s in range(3000)}
    assert starts == set(range(44))
    assert dense_train_start(257, 8, 32, sample_rng(0, 0, 0, 0)) == 0  # max_bound 2 -> randint(0, 1) = 0
    assert dense_train_indices(100, 8, 32, sample_rng(0, 0, 0, 0)).tolist() == [1, 33, 65, 97, 29, 61, 93, 25]


@pytest.mark.parametrize("F", FRAME_COUNTS)
@pytest.mark.parametrize("n", [1, 3, 10])
def test_dense_test_matches_original(F, n):
    assert dense_test_indices(F, 8, 32, n).tolist() == original_read_clip(F, 8, 32, n)


def test_dense_test_examples():
    # 300 frames, 10 clips: tick 30, starts clipped at max_bound 45
    assert dense_test_indices(300, 8, 32, 10)[:, 0].tolist() == [1, 31, 46, 46, 46, 46, 46, 46, 46, 46]
    assert eval_indices("dense", 300, 8, 32, 1).tolist() == [[1, 33, 65, 97, 129, 161, 193, 225]]


@pytest.mark.parametrize("F", [3, 8, 50, 301])
def test_uniform_segments(F):
    T = 8
    rng = sample_rng(0, 0, 0, 0)
    for _ in range(50):
        idx = uniform_train_indices(F, T, rng)
        assert idx.shape == (T,) and (np.diff(idx) >= 0).all() and idx.min() >= 1 and idx.max() <= F
        if F >= T:
            edges = np.linspace(0, F, T + 1)
            assert all(
                np.floor(edges[i]) + 1 <= idx[i] <= max(np.floor(edges[i + 1]), np.floor(edges[i]) + 1)
                for i in range(T)
            )
    centres = uniform_test_indices(F, T, 1)
    assert centres.shape == (1, T) and centres.min() >= 1 and centres.max() <= F
    assert uniform_test_indices(80, 8, 1).tolist() == [[6, 16, 26, 36, 46, 56, 66, 76]]
    assert uniform_test_indices(F, T, 4).shape == (4, T)


def test_rng_is_a_pure_function_of_its_key():
    a = sample_rng(1, 2, 3, 0).integers(0, 1 << 30, 5)
    assert (a == sample_rng(1, 2, 3, 0).integers(0, 1 << 30, 5)).all()
    for other in [(0, 2, 3, 0), (1, 3, 3, 0), (1, 2, 4, 0), (1, 2, 3, 1)]:
        assert (a != sample_rng(*other).integers(0, 1 << 30, 5)).any()
