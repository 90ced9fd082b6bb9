r"""Learning-rate schedules as multipliers of the step, and the weight-decay schedules of a run.

The training loop sets ``group["lr"] = lr · η_t`` before step ``t`` (0-based), where ``η_t`` is
:class:`LRSchedule`'s value; the same line serves a stacked model, whose ``lr`` is a tensor of
shape ``(K,)``. With ``W = warmup_steps``, ``T`` the run's steps, ``u = t − W``, ``U = T − W``
and ``r = final_lr_ratio``:

===================  ==================================================================
schedule             ``η_t`` (after ``η_t = (t+1)/W`` for ``t < W``)
===================  ==================================================================
``constant``         ``1``
``cosine``           ``r + (1 − r)·½(1 + cos(π·u/U))``
``warmup_cosine``    the same; needs ``W ≥ 1``
``step``             ``γ^k``, ``k`` the number of milestones ``m`` with ``t ≥ round(m·T)``
``restarts``         SGDR: :func:`decaylab.schedules.warm_restart_multiplier` at ``u`` with
                     ``T_0 = restart_steps`` (default ``U // (1 + M + M²)``: three periods
                     fill the run), ``T_mult = M = restart_mult``, ``η_min = r``
===================  ==================================================================

With ``factors = (f_0, …, f_{n−1})`` the result is multiplied by the piecewise-linear curve
through ``f_i`` at step ``i·(T−1)/(n−1)`` (:func:`piecewise_linear`): a learning-rate schedule given
as a table, e.g. one measured from another run (the ``lr_factors:...`` callback; ``decaylab reproduce
undertraining`` gives a λ = 0 run the effective learning rate of a decayed one this way).

A weight-decay window (:class:`decaylab.schedules.DecayWindows`, made by the ``decay_window:...``
callback of :mod:`decaylab.train.callbacks`; importable from here too) says *when* λ acts: in any
union of ``[start, end)`` step ranges (early decay, Golatkar et al. 2019: ``[0, round(0.5·T))``; late
decay the rest), times a factor that may match the integrated decay of the whole run; ``λ`` may be a
``(K,)`` tensor, one per stacked model, and the optimizer still scales it by ``s_t`` (``decay_scale``).
:class:`DecaySchedule`, registered as plain data (:func:`decaylab.optim.schedules.plain_data`) like
every schedule, is kept so that checkpoints written with it still load.

>>> s = LRSchedule("cosine", total_steps=4, warmup_steps=2)
>>> [round(s(t), 4) for t in range(4)]
[0.5, 1.0, 1.0, 0.5]
>>> [LRSchedule("constant", total_steps=5, factors=(1.0, 3.0))(t) for t in range(5)]
[1.0, 1.5, 2.0, 2.5, 3.0]
>>> [DecayWindows(0.1, ((0, 2),))(t) for t in range(4)]
[0.1, 0.1, 0.0, 0.0]
>>> [DecayWindows(0.1, ((1, 2), (3, 4)), factor=2.0)(t) for t in range(4)]
[0.0, 0.2, 0.0, 0.2]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from decaylab.optim.schedules import DecayWindows, plain_data, warm_restart_multiplier

from .config import TrainConfig

__all__ = ["LRSchedule", "DecayWindows", "DecaySchedule", "lr_schedule", "piecewise_linear"]


@plain_data
@dataclass(frozen=True)
class LRSchedule:
    """``η_t`` for step ``t`` (0-based) of a run of ``total_steps`` steps; see the module table."""

    kind: str
    total_steps: int
    warmup_steps: int = 0
    final_ratio: float = 0.0
    milestones: tuple[int, ...] = ()  # "step": absolute steps
    gamma: float = 0.1
    restart_steps: int | None = None
    restart_mult: int = 2
    factors: tuple[float, ...] = ()  # a piecewise-linear multiplier over the run (piecewise_linear)

    def __post_init__(self) -> None:
        if self.warmup_steps >= self.total_steps and self.warmup_steps > 0:
            raise ValueError(
                f"warmup_steps must be smaller than the run's {self.total_steps} steps; got {self.warmup_steps}"
            )

    @property
    def first_period(self) -> int:
        """``T_0`` of the ``restarts`` schedule, in steps after the warmup."""
        if self.restart_steps is not None:
            return self.restart_steps
        m = self.restart_mult
        return max(1, (self.total_steps - self.warmup_steps) // (1 + m + m * m))

    def __call__(self, t: int) -> float:
        return self._eta(t) * self.factor(t) if self.factors else self._eta(t)

    def factor(self, t: int) -> float:
        """The ``factors`` curve at step ``t`` (:func:`piecewise_linear`)."""
        return piecewise_linear(self.factors, t, self.total_steps)

    def _eta(self, t: int) -> float:
        w = self.warmup_steps
        if t < w:
            return (t + 1) / w
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return self.gamma ** sum(t >= m for m in self.milestones)
        u, span = t - w, self.total_steps - w
        r = self.final_ratio
        if self.kind in ("cosine", "warmup_cosine"):
            return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * min(u, span) / span))
        if self.kind == "restarts":
            return warm_restart_multiplier(u, self.first_period, self.restart_mult, eta_min=r)
        raise ValueError(
            f"schedule must be one of 'constant', 'cosine', 'warmup_cosine', 'step', 'restarts'; got {self.kind!r}"
        )


def piecewise_linear(values: tuple[float, ...], t: int, total_steps: int) -> float:
    """The curve through ``values`` at step ``t`` of ``total_steps``: linear between the values placed at
    steps ``i·(T−1)/(n−1)``, so the first value acts at step 0 and the last at the last step.

    >>> [piecewise_linear((1.0, 3.0), t, 5) for t in range(5)]
    [1.0, 1.5, 2.0, 2.5, 3.0]
    """
    n = len(values)
    x = min(max(t, 0), total_steps - 1) * (n - 1) / max(1, total_steps - 1)
    i = min(int(x), n - 2)
    return values[i] + (x - i) * (values[i + 1] - values[i])


@plain_data
@dataclass(frozen=True)
class DecaySchedule:
    """Early or late decay as checkpoints written before :class:`DecayWindows` hold it (they load into
    this class, which acts as the window it stands for): ``early`` decays for ``t < switch_step``,
    ``late`` for ``t ≥ switch_step``."""

    weight_decay: Any
    kind: str
    switch_step: int

    def __call__(self, t: int) -> Any:
        on = t < self.switch_step if self.kind == "early" else t >= self.switch_step
        return self.weight_decay * (1.0 if on else 0.0)


def lr_schedule(config: TrainConfig, total_steps: int) -> LRSchedule:
    """The :class:`LRSchedule` of ``config`` for a run of ``total_steps`` steps (the lr callbacks'
    factors multiply it in the loop)."""
    return LRSchedule(
        kind=config.schedule,
        total_steps=total_steps,
        warmup_steps=config.warmup_steps,
        final_ratio=config.final_lr_ratio,
        milestones=tuple(round(m * total_steps) for m in config.lr_milestones),
        gamma=config.lr_gamma,
        restart_steps=config.restart_steps,
        restart_mult=config.restart_mult,
    )
