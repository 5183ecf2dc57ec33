"""Learning-rate schedules: the original's per-epoch MultiStepLR, cosine with warmup."""

import pytest
from omegaconf import OmegaConf

from msca.config import TrainConfig
from msca.training.optim import lr_factor


def train(**kw):
    return OmegaConf.merge(OmegaConf.structured(TrainConfig), kw)


def test_step_schedule_is_per_epoch_multistep():
    t = train(schedule="step", milestones=[10, 15], gamma=0.1, epochs=18)
    spe = 7
    got = [lr_factor(e * spe + s, t, spe) for e in range(18) for s in (0, spe - 1)]
    want = [1.0] * 20 + [0.1] * 10 + [0.01] * 6
    assert got == pytest.approx(want)


def test_cosine_with_warmup():
    t = train(schedule="cosine", epochs=10, warmup_epochs=1, lr=1.0, min_lr=0.1)
    spe = 10
    assert lr_factor(0, t, spe) == pytest.approx(0.1) and lr_factor(9, t, spe) == pytest.approx(1.0)
    assert lr_factor(10, t, spe) == pytest.approx(1.0)
    assert lr_factor(10 + 45, t, spe) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, t, spe) == pytest.approx(0.1)
    values = [lr_factor(s, t, spe) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
