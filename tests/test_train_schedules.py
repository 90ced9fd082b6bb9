"""The lr multipliers η_t and the weight-decay schedules of decaylab.train, against hand-computed values."""
from __future__ import annotations

import math
import pickle

import pytest
import torch

from decaylab.train import DecayWindows, LRSchedule, TrainConfig, lr_schedule
from decaylab.train.callbacks import parse
from decaylab.train.schedules import DecaySchedule


def values(schedule, n):
    return [schedule(t) for t in range(n)]


def test_constant():
    assert values(LRSchedule("constant", 5), 5) == [1.0] * 5


def test_constant_with_warmup():
    assert values(LRSchedule("constant", 6, warmup_steps=4), 6) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def cos(x):
    return 0.5 * (1 + math.cos(math.pi * x))


def test_cosine():
    s = LRSchedule("cosine", 4)
    assert values(s, 4) == pytest.approx([1.0, cos(1 / 4), 0.5, cos(3 / 4)])


def test_cosine_to_a_floor():
    s = LRSchedule("cosine", 4, final_ratio=0.1)
    assert s(2) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s(100) == pytest.approx(0.1)  # past the end: stays at the floor


def test_warmup_cosine():
    s = LRSchedule("warmup_cosine", 6, warmup_steps=2)  # cosine over the remaining 4 steps
    assert values(s, 6) == pytest.approx([0.5, 1.0, 1.0, cos(1 / 4), 0.5, cos(3 / 4)])


def test_step():
    config = TrainConfig(schedule="step", lr_milestones=(0.5, 0.75), lr_gamma=0.1)
    s = lr_schedule(config, 8)
    assert s.milestones == (4, 6)
    assert values(s, 8) == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_restarts_explicit_period():
    s = LRSchedule("restarts", 100, restart_steps=4, restart_mult=2)  # restarts at 4, 12
    first = [1.0, cos(1 / 4), 0.5, cos(3 / 4)]
    assert values(s, 13) == pytest.approx([*first, 1.0, *[cos(i / 8) for i in range(1, 8)], 1.0])


def test_restarts_default_period_fills_the_run_with_three_periods():
    s = lr_schedule(TrainConfig(schedule="restarts", restart_mult=2, warmup_steps=2), 72)
    assert s.first_period == 10  # (72 - 2) // (1 + 2 + 4)
    restarts = [t for t in range(3, 72) if s(t) == 1.0]
    assert restarts == [2 + 10, 2 + 30]


def test_restarts_floor():
    s = LRSchedule("restarts", 10, restart_steps=2, final_ratio=0.2)
    assert s(1) == pytest.approx(0.2 + 0.8 * 0.5)


def test_warmup_must_be_shorter_than_the_run():
    with pytest.raises(ValueError, match="warmup_steps must be smaller than the run's 5 steps"):
        LRSchedule("constant", 5, warmup_steps=5)


def decay(text, wd=0.1, steps=10, schedule="constant", scale="lr"):
    return parse(text).weight_decay(wd, steps=steps, lr_schedule=LRSchedule(schedule, steps), decay_scale=scale)


def test_decay_windows():
    early, late = decay("decay_window:0-0.3"), decay("decay_window:0.3-1")
    assert values(early, 5) == [0.1, 0.1, 0.1, 0.0, 0.0]
    assert values(late, 5) == [0.0, 0.0, 0.0, 0.1, 0.1]
    assert values(decay("decay_window:0-0.2,0.5-0.6"), 7) == [0.1, 0.1, 0.0, 0.0, 0.0, 0.1, 0.0]
    # the windows of the checkpoints written before them (DecaySchedule) decay exactly as the windows do
    assert values(DecaySchedule(0.1, "early", 3), 10) == values(early, 10)
    assert values(DecaySchedule(0.1, "late", 3), 10) == values(late, 10)
    stacked = DecayWindows(torch.tensor([0.1, 0.2], dtype=torch.float64), ((0, 1),))
    assert stacked(0).tolist() == [0.1, 0.2] and stacked(1).tolist() == [0.0, 0.0]
    assert pickle.loads(pickle.dumps(early)) == early  # they travel in optimizer checkpoints


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("scale", ["lr", "schedule", "corrected", "constant"])
def test_matched_windows_keep_the_integrated_decay(schedule, scale):
    lr_schedule_ = LRSchedule(schedule, 20)
    s = {"lr": lr_schedule_, "schedule": lr_schedule_, "corrected": lambda t: lr_schedule_(t) ** 2,
         "constant": lambda t: 1.0}[scale]
    whole = sum(s(t) * 0.1 for t in range(20))
    for text in ("decay_window:0-0.5,matched", "decay_window:0.25-0.5,0.75-1,matched"):
        window = decay(text, steps=20, schedule=schedule, scale=scale)
        assert sum(s(t) * window(t) for t in range(20)) == pytest.approx(whole, rel=1e-12), text
    with pytest.raises(ValueError, match="no decay to match"):
        decay("decay_window:0-0.01,matched", steps=20, schedule=schedule, scale=scale)
