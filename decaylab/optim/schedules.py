"""Weight-decay schedules, warm restarts and normalized weight decay.

A *weight-decay schedule* is any callable ``step -> λ_t``, where ``step`` is the 0-based index of
the optimizer step being taken (0 for the first step). decaylab's optimizers call
``group["weight_decay"](step)`` whenever a group's ``weight_decay`` is callable, and use the
returned ``λ_t`` exactly where they would have used a constant ``λ``.

λ convention: these schedules only say *when* and *how much* of a λ to apply; they do not change
what λ means. The λ you pass is in whatever convention the optimizer's ``decay_scale`` uses, and
each step's decay is still ``s_t·λ_t`` with ``s_t`` given by the scale (``lr``: ``s_t = lr_t``,
torch's convention; ``schedule``: ``s_t = lr_t / lr_max``, the AdamW paper's; ``corrected``:
``lr_t² / lr_max``; ``constant``: ``1``). So ``EarlyDecay(0.1, until=1000)`` with
``decay_scale="lr"`` is torch's AdamW with ``weight_decay=0.1`` for the first 1000 steps and no
decay afterwards.

Every schedule here is a plain frozen dataclass with ``__call__``: schedules live in optimizer
``param_groups``, and a decaylab optimizer's ``state_dict()`` writes them as plain data (a dict of
numbers, :func:`to_state`), which ``torch.load`` reads with its default ``weights_only=True`` in a
fresh process; ``load_state_dict`` makes the schedule again (:func:`from_state`). HF Trainer and
Lightning resume that way. A schedule that is not plain data (a lambda, a ``FollowSchedule`` whose
multiplier is a function, a class of your own) stays an object in the state dict: ``torch.save``
pickles it, and ``torch.load`` then needs ``torch.serialization.safe_globals`` (or, for a file you
wrote yourself, its unsafe mode that runs what the file names).

Also here: the SGDR / AdamWR warm-restart cosine (``warm_restart_multiplier``,
``restart_points``, the lr scheduler ``WarmRestarts`` and the decay schedule
``WarmRestartDecay``), and the AdamW paper's normalized weight decay
(``normalized_weight_decay``, ``weight_decay_to_normalized``). Formulas and sources:
``docs/methods.md`` §2–§3.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "SCHEDULE_CLASSES",
    "ConstantDecay",
    "CosineDecay",
    "DecayWindows",
    "EarlyDecay",
    "FollowSchedule",
    "LateDecay",
    "WarmRestartDecay",
    "WarmRestarts",
    "normalized_weight_decay",
    "restart_points",
    "warm_restart_multiplier",
    "weight_decay_to_normalized",
]


# --------------------------------------------------------------------------------------------------
# validation helpers


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        if minimum == 0:
            allowed = "a non-negative int"
        elif minimum == 1:
            allowed = "a positive int"
        else:
            allowed = f"an int >= {minimum}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def _check_real(name: str, value: object, minimum: float = 0.0, *, strict: bool = False) -> float:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and (value > minimum if strict else value >= minimum)
    )
    if not ok:
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {op} {minimum:g}, got {value!r}")
    return float(value)


def _check_time(name: str, value: object) -> int | float:
    """A non-negative time that may be fractional (fractional epochs); ints stay ints (exact)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return _check_int(name, value, 0)
    return _check_real(name, value, 0.0)


def _check_step(step: object) -> int:
    """The optimizer's step index: a non-negative int (an integral float or a one-element tensor,
    such as torch's ``state["step"]``, is accepted too)."""
    if not isinstance(step, bool):
        if isinstance(step, torch.Tensor) and step.numel() == 1:
            step = step.item()
        try:
            value = operator.index(step)
        except TypeError:
            value = None
            if isinstance(step, numbers.Real) and math.isfinite(step) and float(step).is_integer():
                value = int(step)
        if value is not None and value >= 0:
            return value
    raise ValueError(f"step must be a non-negative int, got {step!r}")


def _either(name: str, value: object, torch_name: str, torch_value: object, default: object) -> object:
    """An argument given by decaylab's name or torch's, not both."""
    if value is not None and torch_value is not None:
        raise ValueError(f"{name} and {torch_name} are the same argument; give one")
    if value is not None:
        return value
    return torch_value if torch_value is not None else default


def _set(obj: object, name: str, value: object) -> None:
    # The schedules are frozen dataclasses; store the validated, normalized value (e.g. int, not
    # numpy.int64) so that repr and pickles stay plain.
    object.__setattr__(obj, name, value)


# --------------------------------------------------------------------------------------------------
# schedules `step -> λ_t`


@dataclass(frozen=True)
class ConstantDecay:
    """Constant weight decay: ``λ_t = λ`` for every step ``t``.

    Lets code treat a constant λ like any other schedule.

    >>> ConstantDecay(0.1)(0), ConstantDecay(0.1)(10_000)
    (0.1, 0.1)
    """

    weight_decay: float

    def __post_init__(self) -> None:
        _set(self, "weight_decay", _check_real("weight_decay", self.weight_decay))

    def __call__(self, step: int) -> float:
        _check_step(step)
        return self.weight_decay


@dataclass(frozen=True)
class EarlyDecay:
    """Early weight decay: ``λ_t = λ`` for ``t < until``, ``λ_t = 0`` for ``t >= until``.

    Golatkar et al. 2019 ("Time matters in regularizing deep networks"): removing weight decay after
    the early phase barely hurts; Bjorck et al., AAAI 2021: with early decay the weight norm stays
    small afterwards, so effective updates stay large. ``until=0`` means no decay at all.

    >>> schedule = EarlyDecay(0.1, until=3)
    >>> [schedule(t) for t in range(5)]
    [0.1, 0.1, 0.1, 0.0, 0.0]
    """

    weight_decay: float
    until: int

    def __post_init__(self) -> None:
        _set(self, "weight_decay", _check_real("weight_decay", self.weight_decay))
        _set(self, "until", _check_int("until", self.until, 0))

    def __call__(self, step: int) -> float:
        return self.weight_decay if _check_step(step) < self.until else 0.0


@dataclass(frozen=True)
class LateDecay:
    """Late weight decay: ``λ_t = 0`` for ``t < after``, ``λ_t = λ`` for ``t >= after``.

    The mirror image of ``EarlyDecay`` (Golatkar et al. 2019 report that decay applied only late
    does not recover the benefit of early decay). ``after=0`` means decay from the first step.

    >>> schedule = LateDecay(0.1, after=2)
    >>> [schedule(t) for t in range(4)]
    [0.0, 0.0, 0.1, 0.1]
    """

    weight_decay: float
    after: int

    def __post_init__(self) -> None:
        _set(self, "weight_decay", _check_real("weight_decay", self.weight_decay))
        _set(self, "after", _check_int("after", self.after, 0))

    def __call__(self, step: int) -> float:
        return self.weight_decay if _check_step(step) >= self.after else 0.0


@dataclass(frozen=True)
class FollowSchedule:
    """Weight decay times any multiplier: ``λ_t = λ·multiplier(t)``.

    ``multiplier`` is a callable ``step -> float`` that must return a finite number >= 0 (checked at
    every call). It must be picklable (a module-level function or an instance of a module-level
    class, not a lambda or a closure) if the optimizer state will be saved.

    To make the decay follow the learning-rate schedule as in the AdamW paper, prefer
    ``decay_scale="schedule"`` on the optimizer (``s_t = lr_t/lr_max``) with a constant λ; use this
    class for a decay schedule that differs from the lr schedule.

    >>> import math
    >>> schedule = FollowSchedule(0.1, math.sqrt)
    >>> schedule(4)
    0.2
    """

    weight_decay: float
    multiplier: Callable[[int], float]

    def __post_init__(self) -> None:
        _set(self, "weight_decay", _check_real("weight_decay", self.weight_decay))
        if not callable(self.multiplier):
            raise ValueError(  # noqa: TRY004 -- decaylab raises ValueError for every bad argument
                f"multiplier must be a callable step -> float, got {self.multiplier!r}"
            )

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        value = self.multiplier(step)
        factor = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            factor = math.nan
        if not (math.isfinite(factor) and factor >= 0):
            raise ValueError(f"multiplier({step}) must return a finite number >= 0, got {value!r}")
        return self.weight_decay * float(factor)


@dataclass(frozen=True)
class CosineDecay:
    """Cosine-annealed weight decay from ``λ`` to ``final`` over ``total_steps`` steps:

    ``λ_t = final + (λ - final)·½(1 + cos(π·min(t, T)/T))``, with ``T = total_steps``,

    so ``λ_0 = λ`` and ``λ_t = final`` for ``t >= T``. ``final > λ`` gives a cosine *increase*.

    >>> schedule = CosineDecay(0.1, total_steps=4)
    >>> [round(schedule(t), 6) for t in range(6)]
    [0.1, 0.085355, 0.05, 0.014645, 0.0, 0.0]
    """

    weight_decay: float
    total_steps: int
    final: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "weight_decay", _check_real("weight_decay", self.weight_decay))
        _set(self, "total_steps", _check_int("total_steps", self.total_steps, 1))
        _set(self, "final", _check_real("final", self.final))

    def __call__(self, step: int) -> float:
        t = min(_check_step(step), self.total_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * t / self.total_steps))
        return self.final + (self.weight_decay - self.final) * cosine


# --------------------------------------------------------------------------------------------------
# warm restarts (SGDR, Loshchilov & Hutter 2017; AdamWR, Loshchilov & Hutter 2019)


def _restart_period(t: float, t_0: int, t_mult: int) -> tuple[int | float, int]:
    """``(T_cur, T_i)``: time since the last restart and the length of the current period."""
    if t_mult == 1:
        _, t_cur = divmod(t, t_0)  # exact for ints; for floats Python's % is exact too
        return t_cur, t_0
    # Periods grow geometrically, so this loop runs O(log t) times; integer arithmetic keeps the
    # restart times exact (a closed form through math.log misplaces some of them).
    start, t_i = 0, t_0
    while t >= start + t_i:
        start += t_i
        t_i *= t_mult
    return t - start, t_i


def warm_restart_multiplier(
    t: float,
    t_0: int,
    t_mult: int = 1,
    eta_min: float = 0.0,
    eta_max: float = 1.0,
) -> float:
    """The SGDR / AdamWR cosine with warm restarts at time ``t``:

    ``η_t = η_min + ½(η_max - η_min)(1 + cos(π·T_cur/T_i))``, ``T_0 = t_0``,
    ``T_{i+1} = T_mult·T_i``,

    where ``T_i`` is the length of the current period and ``T_cur`` the time since the last
    restart (restarts at ``t_0, t_0 + t_0·t_mult, …``, see ``restart_points``). ``t`` counts in
    whatever unit the caller uses — steps, or epochs, possibly fractional
    (``epoch + i/steps_per_epoch``) as in the SGDR paper — and ``t_0`` is in the same unit. At a
    restart ``η = η_max``; just before one, ``η`` approaches ``η_min``.

    >>> warm_restart_multiplier(0, t_0=100), warm_restart_multiplier(50, t_0=100)
    (1.0, 0.5)
    >>> warm_restart_multiplier(300, t_0=100, t_mult=2)  # a restart
    1.0
    >>> warm_restart_multiplier(200.0, t_0=100, t_mult=2)  # halfway through [100, 300)
    0.5
    """
    t = _check_time("t", t)
    t_0 = _check_int("t_0", t_0, 1)
    t_mult = _check_int("t_mult", t_mult, 1)
    eta_min = _check_real("eta_min", eta_min)
    eta_max = _check_real("eta_max", eta_max)
    if eta_min > eta_max:
        raise ValueError(f"eta_min must be <= eta_max, got eta_min={eta_min}, eta_max={eta_max}")
    t_cur, t_i = _restart_period(t, t_0, t_mult)
    return eta_min + 0.5 * (eta_max - eta_min) * (1.0 + math.cos(math.pi * t_cur / t_i))


def restart_points(t_0: int, t_mult: int, n: int) -> list[int]:
    """The first ``n`` restart times of SGDR: ``t_0·(1 + T_mult + … + T_mult^(k-1))``, k = 1..n.

    >>> restart_points(100, 2, 4)  # the AdamW paper's example, in epochs
    [100, 300, 700, 1500]
    >>> restart_points(10, 1, 3)
    [10, 20, 30]
    """
    t_0 = _check_int("t_0", t_0, 1)
    t_mult = _check_int("t_mult", t_mult, 1)
    n = _check_int("n", n, 0)
    points, start, t_i = [], 0, t_0
    for _ in range(n):
        start += t_i
        points.append(start)
        t_i *= t_mult
    return points


class WarmRestarts(LRScheduler):
    """Cosine learning rate with warm restarts (SGDR; the lr part of AdamWR).

    At scheduler time ``t`` (the number of ``step()`` calls so far) each group's lr is

    ``lr_t = eta_min + (base_lr - eta_min)·½(1 + cos(π·T_cur/T_i))``, ``T_0 = t_0``,
    ``T_{i+1} = t_mult·T_i`` (torch's spellings ``T_0=`` and ``T_mult=`` work too),

    with ``base_lr`` the group's initial lr, ``T_i`` the current period and ``T_cur`` the time
    since the last restart. Call ``step()`` once per optimizer step (then ``t_0`` counts steps) or
    once per epoch (then ``t_0`` counts epochs): the caller's choice. For integer times this equals
    ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, t_0, t_mult, eta_min)``. The
    lr is computed in closed form from ``last_epoch`` alone, so resuming from a state dict (or
    constructing with ``last_epoch``) is exact.

    Weight decay: with a decaylab optimizer and ``decay_scale="schedule"`` the decay per step is
    ``(lr_t/lr_max)·λ``, so the decay follows the restarts automatically — this is AdamWR. (With
    ``eta_min = 0``, ``lr_t/lr_max = multiplier()``.) For a λ recomputed per period (normalized
    weight decay) use ``WarmRestartDecay``.

    >>> import torch
    >>> optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    >>> scheduler = WarmRestarts(optimizer, t_0=2, t_mult=2)
    >>> lrs = []
    >>> for _ in range(7):
    ...     lrs.append(round(optimizer.param_groups[0]["lr"], 4))
    ...     optimizer.step()
    ...     scheduler.step()
    >>> lrs  # restarts at 2 and 6
    [1.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 1.0]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        t_0: int | None = None,
        t_mult: int | None = None,
        eta_min: float = 0.0,
        last_epoch: int = -1,
        *,
        T_0: int | None = None,  # noqa: N803 -- torch's CosineAnnealingWarmRestarts spells them so
        T_mult: int | None = None,  # noqa: N803
    ) -> None:
        t_0 = _either("t_0", t_0, "T_0", T_0, None)
        t_mult = _either("t_mult", t_mult, "T_mult", T_mult, 1)
        if t_0 is None:
            raise ValueError("t_0 (or torch's spelling T_0) is required: the first period's length")
        self.t_0 = _check_int("t_0", t_0, 1)
        self.t_mult = _check_int("t_mult", t_mult, 1)
        self.eta_min = _check_real("eta_min", eta_min)
        last_epoch = _check_int("last_epoch", last_epoch, -1)
        super().__init__(optimizer, last_epoch)

    def _period(self, t: float | None) -> tuple[int | float, int]:
        t = self.last_epoch if t is None else t
        return _restart_period(_check_time("t", t), self.t_0, self.t_mult)

    @property
    def t_cur(self) -> int | float:
        """Time since the last restart, at the scheduler's current time."""
        return self._period(None)[0]

    @property
    def t_i(self) -> int:
        """Length of the current period."""
        return self._period(None)[1]

    def multiplier(self, t: float | None = None) -> float:
        """``½(1 + cos(π·T_cur/T_i))`` in [0, 1] at time ``t`` (default: the scheduler's current
        time, ``last_epoch``), so that ``lr_t = eta_min + (base_lr - eta_min)·multiplier(t)``."""
        t_cur, t_i = self._period(t)
        return 0.5 * (1.0 + math.cos(math.pi * t_cur / t_i))

    def get_lr(self) -> list[float | torch.Tensor]:
        # Same expression as CosineAnnealingWarmRestarts.get_lr, so that the lrs agree to the bit.
        t_cur, t_i = self._period(None)
        cosine = 1 + math.cos(math.pi * t_cur / t_i)
        return [self.eta_min + (base_lr - self.eta_min) * cosine / 2 for base_lr in self.base_lrs]


@dataclass(frozen=True)
class WarmRestartDecay:
    """Weight decay for warm restarts (AdamWR), with λ optionally re-normalized per period.

    ``t`` is the optimizer step (0-based) and ``t_0`` the first period *in steps*; periods grow as
    ``T_{i+1} = t_mult·T_i`` (restarts at ``restart_points(t_0, t_mult, n)``). Per step:

    - ``normalized=False``: ``λ_i = weight_decay`` in every period;
    - ``normalized=True``: ``weight_decay`` is the normalized ``λ_norm`` and each period gets
      ``λ_i = λ_norm·sqrt(b / (B·T))`` (``normalized_weight_decay``), where ``b = batch_size``,
      ``B = n_train`` and ``T = T_i / steps_per_epoch`` is the length of the *current period in
      epochs* (possibly fractional), as in the AdamW paper's AdamWR;
    - ``λ_t = λ_i`` if ``anneal=False`` (the default), ``λ_t = λ_i·½(1 + cos(π·T_cur/T_i))`` if
      ``anneal=True``.

    Leave ``anneal=False`` with ``decay_scale="schedule"`` and a ``WarmRestarts`` lr scheduler
    stepped once per optimizer step with the same ``t_0, t_mult``: the optimizer already multiplies
    λ_t by ``lr_t/lr_max``, which is the restart cosine (AdamWR exactly, for ``eta_min = 0``).
    Use ``anneal=True`` with ``decay_scale="constant"`` to get the same decay without relying on
    the lr scheduler. ``batch_size``, ``n_train`` and ``steps_per_epoch`` are required when
    ``normalized=True`` and refused otherwise.

    >>> WarmRestartDecay(0.1, t_0=4, anneal=True)(2)  # halfway through the first period
    0.05
    >>> schedule = WarmRestartDecay(0.025, t_0=100, t_mult=2, normalized=True,
    ...                             batch_size=128, n_train=50_000, steps_per_epoch=1)
    >>> f"{schedule(0):.4g}", f"{schedule(100):.4g}"  # T = 100 epochs, then T = 200 epochs
    ('0.0001265', '8.944e-05')
    """

    weight_decay: float
    t_0: int
    t_mult: int = 1
    normalized: bool = False
    batch_size: int | None = None
    n_train: int | None = None
    steps_per_epoch: int | None = None
    anneal: bool = False

    def __post_init__(self) -> None:
        _set(self, "weight_decay", _check_real("weight_decay", self.weight_decay))
        _set(self, "t_0", _check_int("t_0", self.t_0, 1))
        _set(self, "t_mult", _check_int("t_mult", self.t_mult, 1))
        for name in ("normalized", "anneal"):
            value = getattr(self, name)
            if type(value) is not bool:
                raise ValueError(f"{name} must be True or False, got {value!r}")
        for name in ("batch_size", "n_train", "steps_per_epoch"):
            value = getattr(self, name)
            if self.normalized:
                if value is None:
                    raise ValueError(
                        f"{name} must be a positive int when normalized=True, got None"
                    )
                _set(self, name, _check_int(name, value, 1))
            elif value is not None:
                raise ValueError(
                    f"{name} is only used when normalized=True; leave it None, got {value!r}"
                )

    def __call__(self, step: int) -> float:
        t_cur, t_i = _restart_period(_check_step(step), self.t_0, self.t_mult)
        weight_decay = self.weight_decay
        if self.normalized:
            weight_decay = normalized_weight_decay(
                weight_decay, self.batch_size, self.n_train, t_i / self.steps_per_epoch
            )
        if self.anneal:
            weight_decay *= 0.5 * (1.0 + math.cos(math.pi * t_cur / t_i))
        return weight_decay


@dataclass(frozen=True)
class DecayWindows:
    """Weight decay in windows: ``λ_t = λ·factor`` while ``t`` lies in one of the ``[start, end)`` step
    ranges of ``windows``, else ``0`` — early decay (``((0, T₀),)``), late decay, several windows, or
    windows whose ``factor`` gives them the integrated decay of a whole run (Golatkar et al. 2019;
    the ``decay_window:...`` callback of :mod:`decaylab.train.callbacks` builds it). ``weight_decay``
    is a number or a ``(K,)`` tensor, one λ per stacked model.

    >>> [DecayWindows(0.1, ((0, 2),))(t) for t in range(4)]
    [0.1, 0.1, 0.0, 0.0]
    >>> [DecayWindows(0.1, ((1, 2), (3, 4)), factor=2.0)(t) for t in range(4)]
    [0.0, 0.2, 0.0, 0.2]
    """

    weight_decay: object
    windows: tuple[tuple[int, int], ...]
    factor: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.weight_decay, torch.Tensor):
            _set(self, "weight_decay", _check_real("weight_decay", self.weight_decay))
        windows = tuple(tuple(w) for w in self.windows)
        for w in windows:
            if len(w) != 2:
                raise ValueError(f"windows must hold (start, end) step pairs, got {w!r}")
            start, end = (_check_int("window start", w[0], 0), _check_int("window end", w[1], 0))
            if end < start:
                raise ValueError(f"a window must have start <= end, got ({start}, {end})")
        _set(self, "windows", windows)
        _set(self, "factor", _check_real("factor", self.factor))

    def __call__(self, step: int) -> object:
        on = any(start <= step < end for start, end in self.windows)
        return self.weight_decay * (self.factor if on else 0.0)


SCHEDULE_CLASSES: tuple[type, ...] = (
    ConstantDecay,
    EarlyDecay,
    LateDecay,
    DecayWindows,
    FollowSchedule,
    CosineDecay,
    WarmRestartDecay,
)
"""decaylab's weight-decay schedule classes."""


# --------------------------------------------------------------------------------------------------
# schedules as plain data: optimizer state dicts that torch.load(weights_only=True) reads as they are

STATE_KEY = "decaylab_schedule"
_PLAIN: dict[str, type] = {}
_NOT_PLAIN = object()


def plain_data(cls: type) -> type:
    """Register a frozen-dataclass schedule class so that optimizers save it as plain data (a decorator)."""
    _PLAIN[cls.__name__] = cls
    return cls


def _encode(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, tuple):
        items = tuple(_encode(v) for v in value)
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items) else items
    state = to_state(value)
    return _NOT_PLAIN if state is None else state


def to_state(schedule: object) -> dict | None:
    """``schedule`` as plain data (a dict of numbers, strings, tuples and tensors), or None when it is
    not a registered schedule of plain fields (a lambda, a user's class): then it stays an object."""
    cls = type(schedule)
    if _PLAIN.get(cls.__name__) is not cls:
        return None
    fields = {}
    for f in dataclasses.fields(schedule):
        value = _encode(getattr(schedule, f.name))
        if value is _NOT_PLAIN:
            return None
        fields[f.name] = value
    return {STATE_KEY: cls.__name__, "module": cls.__module__, "fields": fields}


def is_state(obj: object) -> bool:
    """Is ``obj`` a schedule saved by :func:`to_state`?"""
    return isinstance(obj, dict) and STATE_KEY in obj


def from_state(obj: object) -> object:
    """The schedule :func:`to_state` saved (other values pass through). Only registered decaylab
    classes are made, from their fields, through their own validation: no code runs from the data."""
    if isinstance(obj, tuple):
        return tuple(from_state(v) for v in obj)
    if not is_state(obj):
        return obj
    name, module = obj.get(STATE_KEY), obj.get("module")
    cls = _PLAIN.get(name)
    if cls is None and isinstance(module, str) and module.startswith("decaylab."):
        importlib.import_module(module)  # a decaylab module that registers it on import
        cls = _PLAIN.get(name)
    fields = obj.get("fields")
    if cls is None or not isinstance(fields, dict):
        raise ValueError(f"weight_decay: the state dict holds a schedule {name!r} that decaylab does not know")
    return cls(**{k: from_state(v) for k, v in fields.items()})


for _cls in SCHEDULE_CLASSES:
    plain_data(_cls)
del _cls


# --------------------------------------------------------------------------------------------------
# normalized weight decay (AdamW paper, Loshchilov & Hutter 2019, Appendix)


def normalized_weight_decay(
    lambda_norm: float, batch_size: int, n_train: int, epochs: float
) -> float:
    """Weight decay from the AdamW paper's normalized weight decay:

    ``λ = λ_norm·sqrt(b / (B·T))``, with ``b = batch_size``, ``B = n_train`` (training-set size) and
    ``T = epochs`` (with warm restarts: the current period's length in epochs).

    ``λ`` is in the same convention as ``λ_norm`` (the paper's: per-step decay ``η_t·λ``, i.e.
    ``decay_scale="schedule"``). The paper's CIFAR-10 example:

    >>> f"{normalized_weight_decay(0.025, batch_size=128, n_train=50_000, epochs=100):.4g}"
    '0.0001265'
    """
    lambda_norm = _check_real("lambda_norm", lambda_norm)
    batch_size = _check_int("batch_size", batch_size, 1)
    n_train = _check_int("n_train", n_train, 1)
    epochs = _check_real("epochs", epochs, strict=True)
    return lambda_norm * math.sqrt(batch_size / (n_train * epochs))


def weight_decay_to_normalized(
    weight_decay: float, batch_size: int, n_train: int, epochs: float
) -> float:
    """The inverse of ``normalized_weight_decay``: ``λ_norm = λ·sqrt(B·T / b)``.

    >>> round(weight_decay_to_normalized(1.2649110640673517e-4, 128, 50_000, 100), 12)
    0.025
    """
    weight_decay = _check_real("weight_decay", weight_decay)
    batch_size = _check_int("batch_size", batch_size, 1)
    n_train = _check_int("n_train", n_train, 1)
    epochs = _check_real("epochs", epochs, strict=True)
    return weight_decay * math.sqrt(n_train * epochs / batch_size)
