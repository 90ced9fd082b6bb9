import doctest
import io
import itertools
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decaylab import schedules
from decaylab.schedules import (
    SCHEDULE_CLASSES,
    ConstantDecay,
    CosineDecay,
    DecayWindows,
    EarlyDecay,
    FollowSchedule,
    LateDecay,
    WarmRestartDecay,
    WarmRestarts,
    normalized_weight_decay,
    restart_points,
    warm_restart_multiplier,
    weight_decay_to_normalized,
)


def test_doctests() -> None:
    result = doctest.testmod(schedules)
    assert result.attempted > 20
    assert result.failed == 0


# --- simple schedules ---------------------------------------------------------------------------


def test_early_decay_boundary() -> None:
    schedule = EarlyDecay(0.1, until=10)
    assert schedule(0) == 0.1
    assert schedule(9) == 0.1
    assert schedule(10) == 0.0
    assert schedule(10_000) == 0.0
    assert all(EarlyDecay(0.1, until=0)(t) == 0.0 for t in range(5))


def test_late_decay_boundary() -> None:
    schedule = LateDecay(0.1, after=10)
    assert schedule(0) == 0.0
    assert schedule(9) == 0.0
    assert schedule(10) == 0.1
    assert schedule(10_000) == 0.1
    assert all(LateDecay(0.1, after=0)(t) == 0.1 for t in range(5))


def test_early_and_late_partition_constant() -> None:
    early, late = EarlyDecay(0.3, until=7), LateDecay(0.3, after=7)
    for t in range(20):
        assert early(t) + late(t) == ConstantDecay(0.3)(t)
        assert early(t) * late(t) == 0.0


def test_cosine_decay_values() -> None:
    schedule = CosineDecay(0.1, total_steps=100, final=0.01)
    assert schedule(0) == pytest.approx(0.1, rel=1e-15)
    assert schedule(50) == pytest.approx(0.055, rel=1e-12)
    assert schedule(100) == pytest.approx(0.01, rel=1e-15)
    assert schedule(1_000) == schedule(100)
    values = [schedule(t) for t in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    # final > weight_decay: a cosine increase
    rising = CosineDecay(0.0, total_steps=10, final=0.2)
    assert rising(0) == 0.0 and rising(10) == pytest.approx(0.2)


def test_follow_schedule() -> None:
    schedule = FollowSchedule(0.5, CosineDecay(1.0, total_steps=10))
    for t in range(15):
        assert schedule(t) == pytest.approx(0.5 * CosineDecay(1.0, total_steps=10)(t), rel=1e-15)
    assert FollowSchedule(0.1, math.sqrt)(9) == pytest.approx(0.3)


def test_follow_schedule_rejects_bad_multiplier_output() -> None:
    with pytest.raises(ValueError, match=r"multiplier\(3\)"):
        FollowSchedule(0.1, math.cos)(3)  # cos(3) < 0
    with pytest.raises(ValueError, match="multiplier"):
        FollowSchedule(0.1, str)(3)


def test_step_accepts_integral_values() -> None:
    schedule = EarlyDecay(0.1, until=3)
    assert schedule(np.int64(2)) == 0.1
    assert schedule(torch.tensor(3.0)) == 0.0  # torch keeps state["step"] as a float tensor
    assert schedule(torch.tensor(2)) == 0.1
    assert schedule(2.0) == 0.1


@pytest.mark.parametrize("step", [-1, 1.5, True, "3", None, float("nan"), torch.tensor([1, 2])])
def test_step_validation(step: object) -> None:
    for schedule in [
        ConstantDecay(0.1),
        EarlyDecay(0.1, 3),
        LateDecay(0.1, 3),
        FollowSchedule(0.1, math.sqrt),
        CosineDecay(0.1, 5),
        WarmRestartDecay(0.1, 5),
    ]:
        with pytest.raises(ValueError, match="step must be a non-negative int"):
            schedule(step)


# --- warm restarts ------------------------------------------------------------------------------


def test_restart_points() -> None:
    assert restart_points(100, 2, 4) == [100, 300, 700, 1500]
    assert restart_points(10, 1, 3) == [10, 20, 30]
    assert restart_points(5, 3, 0) == []
    assert restart_points(1, 2, 10)[-1] == 2**10 - 1


@pytest.mark.parametrize("t_0,t_mult", [(100, 2), (7, 1), (3, 3)])
def test_multiplier_at_restarts(t_0: int, t_mult: int) -> None:
    points = restart_points(t_0, t_mult, 5)
    assert warm_restart_multiplier(0, t_0, t_mult) == 1.0
    previous = 0
    for point in points:
        assert warm_restart_multiplier(point, t_0, t_mult) == 1.0
        # one step before a restart: the last value of the period, close to eta_min = 0
        before = warm_restart_multiplier(point - 1, t_0, t_mult)
        period = point - previous
        assert before == pytest.approx(0.5 * (1 + math.cos(math.pi * (period - 1) / period)))
        previous = point


def test_multiplier_fractional_epochs_and_eta_range() -> None:
    # halfway through the second period [100, 300)
    assert warm_restart_multiplier(200.0, 100, 2) == pytest.approx(0.5, abs=1e-15)
    assert warm_restart_multiplier(12.5, 10, 1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert warm_restart_multiplier(5, 10, eta_min=0.2, eta_max=0.6) == pytest.approx(0.4)
    assert warm_restart_multiplier(0, 10, eta_min=0.2, eta_max=0.6) == pytest.approx(0.6)


@settings(max_examples=40, deadline=None, database=None)
@given(
    t_0=st.integers(1, 50),
    t_mult=st.integers(1, 4),
    t=st.integers(0, 5_000),
)
def test_multiplier_matches_period_definition(t_0: int, t_mult: int, t: int) -> None:
    # Independent definition: find the period [start, start + T_i) that contains t.
    start, t_i = 0, t_0
    for point in restart_points(t_0, t_mult, t // t_0 + 2):
        if t < point:
            break
        start, t_i = point, t_i * t_mult
    expected = 0.5 * (1 + math.cos(math.pi * (t - start) / t_i))
    assert warm_restart_multiplier(t, t_0, t_mult) == pytest.approx(expected, abs=1e-15)


def _sgd(lrs: list[float]) -> torch.optim.SGD:
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups)


@pytest.mark.parametrize("t_mult", [1, 2, 3])
@pytest.mark.parametrize("eta_min", [0.0, 1e-3])
def test_warm_restarts_equals_torch(t_mult: int, eta_min: float) -> None:
    ours_opt, torch_opt = _sgd([0.1, 0.03]), _sgd([0.1, 0.03])
    ours = WarmRestarts(ours_opt, t_0=10, t_mult=t_mult, eta_min=eta_min)
    reference = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        torch_opt, T_0=10, T_mult=t_mult, eta_min=eta_min
    )
    restarts = set(restart_points(10, t_mult, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "scheduler stepped before optimizer" warnings
        for t in range(400):
            for a, b in zip(ours_opt.param_groups, torch_opt.param_groups, strict=True):
                assert a["lr"] == pytest.approx(b["lr"], rel=1e-12, abs=0)
            assert ours.get_last_lr() == pytest.approx(reference.get_last_lr(), rel=1e-12, abs=0)
            assert ours.t_cur == reference.T_cur and ours.t_i == reference.T_i
            assert ours.last_epoch == t
            if t in restarts or t == 0:
                assert ours_opt.param_groups[0]["lr"] == 0.1
            ours_opt.step()
            torch_opt.step()
            ours.step()
            reference.step()


def test_warm_restarts_multiplier_and_lr() -> None:
    optimizer = _sgd([0.2])
    scheduler = WarmRestarts(optimizer, t_0=5, t_mult=2, eta_min=0.01)
    for t in range(40):
        lr = optimizer.param_groups[0]["lr"]
        assert scheduler.multiplier() == scheduler.multiplier(t) == warm_restart_multiplier(t, 5, 2)
        assert lr == pytest.approx(0.01 + (0.2 - 0.01) * scheduler.multiplier(), rel=1e-14)
        optimizer.step()
        scheduler.step()
    assert scheduler.multiplier(15) == 1.0  # restart at 5 + 10
    assert scheduler.multiplier(10.0) == pytest.approx(0.5)


def test_warm_restarts_state_dict_resume() -> None:
    optimizer = _sgd([0.1])
    scheduler = WarmRestarts(optimizer, t_0=3, t_mult=2)
    for _ in range(11):
        optimizer.step()
        scheduler.step()
    state = pickle.loads(pickle.dumps(scheduler.state_dict()))
    opt_state = optimizer.state_dict()

    resumed_opt = _sgd([0.1])
    resumed_opt.load_state_dict(opt_state)
    resumed = WarmRestarts(resumed_opt, t_0=3, t_mult=2, last_epoch=10)
    resumed.load_state_dict(state)
    for _ in range(20):
        assert resumed_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
        for opt, sched in [(optimizer, scheduler), (resumed_opt, resumed)]:
            opt.step()
            sched.step()


def test_warm_restart_decay_values() -> None:
    plain = WarmRestartDecay(0.1, t_0=10, t_mult=2)
    assert all(plain(t) == 0.1 for t in range(100))

    annealed = WarmRestartDecay(0.1, t_0=10, t_mult=2, anneal=True)
    for t in range(100):
        assert annealed(t) == pytest.approx(0.1 * warm_restart_multiplier(t, 10, 2), rel=1e-15)

    # normalized: T is the current period in epochs; 50 steps per epoch, periods 100, 200, 400 steps
    normalized = WarmRestartDecay(
        0.05, t_0=100, t_mult=2, normalized=True, batch_size=64, n_train=3200, steps_per_epoch=50
    )
    for step, epochs in [(0, 2), (99, 2), (100, 4), (299, 4), (300, 8)]:
        assert normalized(step) == pytest.approx(0.05 * math.sqrt(64 / (3200 * epochs)), rel=1e-14)
    # the λ of one period scales as 1/sqrt(T)
    assert normalized(0) / normalized(100) == pytest.approx(math.sqrt(2))


def test_warm_restart_decay_follows_scheduler() -> None:
    # anneal=True reproduces lr_t / lr_max of WarmRestarts stepped once per optimizer step
    optimizer = _sgd([0.3])
    scheduler = WarmRestarts(optimizer, t_0=4, t_mult=3)
    decay = WarmRestartDecay(1.0, t_0=4, t_mult=3, anneal=True)
    for step in range(60):
        assert decay(step) == pytest.approx(
            optimizer.param_groups[0]["lr"] / 0.3, rel=1e-14, abs=1e-16
        )
        optimizer.step()
        scheduler.step()


# --- normalized weight decay --------------------------------------------------------------------


def test_normalized_weight_decay_example() -> None:
    # AdamW paper / methods.md: b=128, B=50000, T=100, λ_norm=0.025 → λ ≈ 1.27e-4
    value = normalized_weight_decay(0.025, batch_size=128, n_train=50_000, epochs=100)
    assert value == pytest.approx(1.2649110640673517e-4, rel=1e-12)
    assert value == pytest.approx(1.27e-4, rel=0.01)


@settings(max_examples=30, deadline=None, database=None)
@given(
    lam=st.floats(0, 10),
    batch_size=st.integers(1, 4096),
    n_train=st.integers(1, 10**7),
    epochs=st.floats(0.01, 1000),
)
def test_normalized_round_trip(lam: float, batch_size: int, n_train: int, epochs: float) -> None:
    wd = normalized_weight_decay(lam, batch_size, n_train, epochs)
    back = weight_decay_to_normalized(wd, batch_size, n_train, epochs)
    assert back == pytest.approx(lam, rel=1e-12, abs=1e-300)


# --- pickling -----------------------------------------------------------------------------------

ALL_SCHEDULES = [
    ConstantDecay(0.1),
    EarlyDecay(0.1, until=5),
    LateDecay(0.1, after=5),
    DecayWindows(0.1, ((0, 3), (6, 9)), factor=2.0),
    FollowSchedule(0.2, CosineDecay(1.0, total_steps=8)),
    FollowSchedule(0.2, math.sqrt),
    CosineDecay(0.1, total_steps=8, final=0.01),
    WarmRestartDecay(0.1, t_0=3, t_mult=2, anneal=True),
    WarmRestartDecay(
        0.025, t_0=30, t_mult=2, normalized=True, batch_size=128, n_train=50_000, steps_per_epoch=10
    ),
]


def test_every_class_is_covered() -> None:
    assert {type(s) for s in ALL_SCHEDULES} == set(SCHEDULE_CLASSES)


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=lambda s: type(s).__name__)
def test_pickle_round_trip(schedule: object) -> None:
    restored = pickle.loads(pickle.dumps(schedule))
    assert restored == schedule
    assert repr(restored) == repr(schedule)
    assert [restored(t) for t in range(50)] == [schedule(t) for t in range(50)]


def test_torch_save_in_param_group_like_dict() -> None:
    state = {"param_groups": [{"weight_decay": s} for s in ALL_SCHEDULES]}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for a, b in zip(loaded["param_groups"], state["param_groups"], strict=True):
        assert [a["weight_decay"](t) for t in range(20)] == [
            b["weight_decay"](t) for t in range(20)
        ]


def test_torch_load_weights_only_with_safe_globals() -> None:
    state = {"weight_decay": [s for s in ALL_SCHEDULES if type(s) is not FollowSchedule]}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    with torch.serialization.safe_globals(list(SCHEDULE_CLASSES)):
        loaded = torch.load(buffer, weights_only=True)
    assert loaded == state


def test_repr_names_fields() -> None:
    assert repr(EarlyDecay(0.1, until=5)) == "EarlyDecay(weight_decay=0.1, until=5)"
    assert (
        repr(EarlyDecay(np.float64(0.1), until=np.int64(5)))
        == "EarlyDecay(weight_decay=0.1, until=5)"
    )


# --- validation ---------------------------------------------------------------------------------

BAD_INPUTS = [
    (DecayWindows, (-0.1, ((0, 2),)), {}, "weight_decay must be a finite number >= 0, got -0.1"),
    (DecayWindows, (0.1, ((3, 2),)), {}, r"start <= end, got \(3, 2\)"),
    (DecayWindows, (0.1, ((0, 2, 4),)), {}, "windows must hold"),
    (DecayWindows, (0.1, ((0, 2.5),)), {}, "window end must be a non-negative int, got 2.5"),
    (ConstantDecay, (-0.1,), {}, "weight_decay must be a finite number >= 0, got -0.1"),
    (ConstantDecay, (float("inf"),), {}, "weight_decay"),
    (ConstantDecay, ("0.1",), {}, "weight_decay"),
    (EarlyDecay, (-0.1, 3), {}, "weight_decay"),
    (EarlyDecay, (0.1, -3), {}, "until must be a non-negative int, got -3"),
    (EarlyDecay, (0.1, 2.5), {}, "until"),
    (LateDecay, (-1.0, 3), {}, "weight_decay"),
    (LateDecay, (0.1, -1), {}, "after must be a non-negative int"),
    (LateDecay, (0.1, True), {}, "after"),
    (FollowSchedule, (-0.1, math.sqrt), {}, "weight_decay"),
    (FollowSchedule, (0.1, 3.0), {}, "multiplier must be a callable"),
    (CosineDecay, (-0.1, 10), {}, "weight_decay"),
    (CosineDecay, (0.1, 0), {}, "total_steps must be a positive int, got 0"),
    (CosineDecay, (0.1, 10), {"final": -0.01}, "final must be a finite number >= 0"),
    (
        warm_restart_multiplier,
        (-1, 10),
        {},
        "t must be a finite number >= 0|t must be a non-negative int",
    ),
    (warm_restart_multiplier, (float("nan"), 10), {}, "t must be"),
    (warm_restart_multiplier, (5, 0), {}, "t_0 must be a positive int"),
    (warm_restart_multiplier, (5, 10.0), {}, "t_0 must be a positive int"),
    (warm_restart_multiplier, (5, 10, 0), {}, "t_mult must be a positive int"),
    (warm_restart_multiplier, (5, 10, 1.5), {}, "t_mult"),
    (warm_restart_multiplier, (5, 10), {"eta_min": -0.1}, "eta_min must be a finite number >= 0"),
    (warm_restart_multiplier, (5, 10), {"eta_max": float("inf")}, "eta_max"),
    (
        warm_restart_multiplier,
        (5, 10),
        {"eta_min": 0.5, "eta_max": 0.1},
        "eta_min must be <= eta_max",
    ),
    (restart_points, (0, 2, 3), {}, "t_0 must be a positive int"),
    (restart_points, (10, 0, 3), {}, "t_mult must be a positive int"),
    (restart_points, (10, 2, -1), {}, "n must be a non-negative int"),
    (WarmRestartDecay, (-0.1, 10), {}, "weight_decay"),
    (WarmRestartDecay, (0.1, 0), {}, "t_0 must be a positive int"),
    (WarmRestartDecay, (0.1, 10, 0), {}, "t_mult must be a positive int"),
    (WarmRestartDecay, (0.1, 10), {"normalized": 1}, "normalized must be True or False"),
    (WarmRestartDecay, (0.1, 10), {"anneal": "yes"}, "anneal must be True or False"),
    (
        WarmRestartDecay,
        (0.1, 10),
        {"normalized": True, "n_train": 100, "steps_per_epoch": 5},
        "batch_size must be a positive int when normalized=True",
    ),
    (
        WarmRestartDecay,
        (0.1, 10),
        {"normalized": True, "batch_size": 10, "steps_per_epoch": 5},
        "n_train must be a positive int when normalized=True",
    ),
    (
        WarmRestartDecay,
        (0.1, 10),
        {"normalized": True, "batch_size": 10, "n_train": 100},
        "steps_per_epoch must be a positive int when normalized=True",
    ),
    (
        WarmRestartDecay,
        (0.1, 10),
        {"normalized": True, "batch_size": 0, "n_train": 100, "steps_per_epoch": 5},
        "batch_size must be a positive int",
    ),
    (
        WarmRestartDecay,
        (0.1, 10),
        {"batch_size": 10},
        "batch_size is only used when normalized=True",
    ),
    (WarmRestartDecay, (0.1, 10), {"steps_per_epoch": 10}, "steps_per_epoch is only used"),
    (
        normalized_weight_decay,
        (-0.025, 128, 50_000, 100),
        {},
        "lambda_norm must be a finite number >= 0",
    ),
    (normalized_weight_decay, (0.025, 0, 50_000, 100), {}, "batch_size must be a positive int"),
    (normalized_weight_decay, (0.025, 128.0, 50_000, 100), {}, "batch_size"),
    (normalized_weight_decay, (0.025, 128, -1, 100), {}, "n_train must be a positive int"),
    (normalized_weight_decay, (0.025, 128, 50_000, 0), {}, "epochs must be a finite number > 0"),
    (normalized_weight_decay, (0.025, 128, 50_000, -2.0), {}, "epochs"),
    (
        weight_decay_to_normalized,
        (-1e-4, 128, 50_000, 100),
        {},
        "weight_decay must be a finite number >= 0",
    ),
    (weight_decay_to_normalized, (1e-4, -128, 50_000, 100), {}, "batch_size"),
    (weight_decay_to_normalized, (1e-4, 128, 0, 100), {}, "n_train"),
    (weight_decay_to_normalized, (1e-4, 128, 50_000, float("inf")), {}, "epochs"),
]


@pytest.mark.parametrize(
    "fn,args,kwargs,match",
    BAD_INPUTS,
    ids=[f"{fn.__name__}-{i}" for i, (fn, *_) in enumerate(BAD_INPUTS)],
)
def test_value_errors(fn, args, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"t_0": 0}, "t_0 must be a positive int"),
        ({"t_0": 10.0}, "t_0"),
        ({"t_0": 10, "t_mult": 0}, "t_mult must be a positive int"),
        ({"t_0": 10, "t_mult": 1.5}, "t_mult"),
        ({"t_0": 10, "eta_min": -1e-3}, "eta_min must be a finite number >= 0"),
        ({"t_0": 10, "last_epoch": -2}, "last_epoch must be an int >= -1"),
    ],
)
def test_warm_restarts_value_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WarmRestarts(_sgd([0.1]), **kwargs)


def test_warm_restarts_multiplier_rejects_negative_time() -> None:
    scheduler = WarmRestarts(_sgd([0.1]), t_0=10)
    with pytest.raises(ValueError, match="t must be"):
        scheduler.multiplier(-1)
