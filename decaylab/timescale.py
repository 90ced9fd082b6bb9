r"""Setting λ: the λ conventions, the timescales a λ sets, and λ from a timescale.

The same number λ means different things in different libraries: each step shrinks the weights by
``s_t·λ`` (decoupled decay, ``w ← w − s_t·λ·w``), and libraries differ in the per-step scale ``s_t``.
With ``α`` the peak learning rate (the group's ``lr``/``max_lr``), ``lr_t = α·η_t`` the scheduled
learning rate and ``η_t`` the schedule's multiplier (:mod:`decaylab.train.schedules`):

=============  ========================  ===============================================================
convention     ``s_t``                   who uses it
=============  ========================  ===============================================================
``torch``      ``lr_t``                  torch ``AdamW``/``SGD``, optax, timm, transformers,
                                         Emerging-Optimizers ``"decoupled"``; decaylab ``decay_scale="lr"``
``paper``      ``lr_t / α``              the AdamW paper, optimi ``decouple_lr=True``, Composer;
                                         decaylab ``decay_scale="schedule"``
``corrected``  ``lr_t² / α``             AdamC (Defazio 2025), timm ``corrected_weight_decay=True``,
                                         pytorch-optimizer ``AdamC``, heavyball; decaylab ``"corrected"``
``constant``   ``1``                     pytorch-optimizer ``fixed_decay=True``, Emerging-Optimizers
                                         ``"independent"``; decaylab ``decay_scale="constant"``
``palm``       ``lr_t²``                 modded-nanogpt, Emerging-Optimizers ``"palm"``; in decaylab:
                                         ``decay_scale="corrected"`` with ``λ_corrected = α·λ_palm``
=============  ========================  ===============================================================

Every ``s_t`` is ``s_peak·η_t^p`` with ``s_peak`` the scale at the peak lr (``α``, ``1``, ``α``,
``1``, ``α²``) and ``p`` the power of the schedule (1, 1, 2, 0, 2). Two conventions with the same
``p`` are equivalent at every step; across powers, "equivalent" needs a definition, and this module
gives two:

- **at peak lr** — the same decay per step while ``lr_t = α``: ``λ_B = λ_A·s_peak,A / s_peak,B``;
- **integrated** — the same total decay over the run, ``Σ_t s_t·λ`` (the integral ``∫ s_t·λ dt``
  as the optimizer takes it, one term per step): ``λ_B = λ_A·Σ_t s_t,A / Σ_t s_t,B``.

With a constant learning rate the two agree. ``Σ_t s_t·λ`` is also the **integrated decay in
e-folds**: decay alone multiplies the weights by ``Π_t (1 − s_t·λ) ≈ exp(−Σ_t s_t·λ)``.
:func:`schedule_sums` gives ``Σ η_t`` and ``Σ η_t²`` in closed form for ``constant``, ``cosine``,
``warmup_cosine`` and linear decay (:func:`lr_schedule`), exactly as decaylab's training loop steps
them, and by summing the steps otherwise.

**Timescales** (Wang & Aitchison, ICML 2025, arXiv 2405.13698): with decoupled decay the weights
are an exponential moving average of the updates with timescale ``τ_iter = 1/(s_peak·λ)`` steps
(``1/(η·λ)`` in torch's convention), i.e. ``τ_epoch = τ_iter·B/N`` epochs for batch size ``B`` and
``N`` training examples (:func:`decaylab.diagnostics.ema_timescale`, the same formula the
instruments log). Bergsma et al. 2025 ("Power Lines", arXiv 2505.13738) measure it as a fraction
of the run, ``τ = B/(η·λ·D)`` with ``D`` the tokens (examples) seen, i.e. ``τ_iter / steps``.
The **equilibrium angular update** of a scale-invariant weight at peak lr is Kosson et al.'s
``sqrt(2·s_peak·λ·(1−β)/(1+β))`` (:func:`decaylab.diagnostics.equilibrium_angular_update`), and
under AdamW its **equilibrium weight norm** per coordinate is ``‖w‖/√C = lr/sqrt(2·s_peak·λ)``
(``sqrt(lr/(2λ))`` in torch's convention; :func:`decaylab.diagnostics.equilibrium_weight_rms`).

The other way round, :func:`tau_iters`, :func:`tau_epochs` and :func:`tau_fraction` return the λ
that gives a timescale, as a plain float for any optimizer's ``weight_decay=``:

>>> from decaylab import timescale
>>> timescale.tau_epochs(5, lr=1e-3, batch_size=128, dataset_size=50_000)   # torch's λ
0.512
>>> timescale.tau_iters(10_000, lr=1e-3)
0.1
>>> round(timescale.convert(0.1, lr=1e-3, source="torch", target="paper"), 12)
0.0001
>>> s = timescale.lr_schedule("cosine", steps=1000)
>>> round(timescale.integrated_decay(0.1, lr=1e-3, schedule=s), 5)   # Σ lr_t·λ
0.05005
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from decaylab.diagnostics.weights import ema_timescale, equilibrium_angular_update, equilibrium_weight_rms
from decaylab.optim.rules import decay_scale
from decaylab.train.schedules import LRSchedule

__all__ = [
    "CONVENTIONS", "Convention", "get_convention", "lr_schedule", "schedule_sums", "total_scale", "convert",
    "conversions", "tau_iter", "tau_epoch", "tau_run_fraction", "integrated_decay", "angular_update", "equilibrium_rms",
    "tau_iters", "tau_epochs", "tau_fraction", "Timescales", "timescales", "Recommendation", "recommendations",
    "SCHEDULE_KINDS",
]


# ----------------------------------------------------------------------------------------------- conventions


@dataclass(frozen=True)
class Convention:
    """One λ convention: its name, decaylab's ``decay_scale`` for it (None where decaylab has none),
    ``s_t`` as text, the power ``p`` of the schedule in ``s_t = s_peak·η_t^p``, and who uses it."""

    name: str
    decay_scale: str | None
    per_step: str
    power: int
    libraries: tuple[str, ...]
    aliases: tuple[str, ...] = ()

    def scale(self, lr_t: float, lr_max: float) -> float:
        """``s_t`` at learning rate ``lr_t`` with peak ``lr_max``."""
        if self.decay_scale is not None:
            return float(decay_scale(self.decay_scale, lr_t, lr_max))  # decaylab's own definition
        return lr_t * lr_t  # palm: not a decaylab decay_scale

    def peak(self, lr: float) -> float:
        """``s_peak``: the scale at the peak learning rate ``lr``."""
        return self.scale(lr, lr)


CONVENTIONS: dict[str, Convention] = {c.name: c for c in (
    Convention("torch", "lr", "lr_t·λ", 1,
               ("torch.optim AdamW/SGD", "optax", "timm", "transformers",
                "Emerging-Optimizers weight_decay_method='decoupled'"), ("lr",)),
    Convention("paper", "schedule", "(lr_t/lr_max)·λ", 1,
               ("AdamW paper (Loshchilov & Hutter 2019)", "optimi decouple_lr=True", "Composer DecoupledAdamW"),
               ("schedule",)),
    Convention("corrected", "corrected", "(lr_t²/lr_max)·λ", 2,
               ("AdamC (Defazio 2025)", "timm corrected_weight_decay=True", "pytorch-optimizer AdamC",
                "heavyball AdamC")),
    Convention("constant", "constant", "λ", 0,
               ("pytorch-optimizer fixed_decay=True", "Emerging-Optimizers weight_decay_method='independent'"),
               ("independent",)),
    Convention("palm", None, "lr_t²·λ", 2,
               ("modded-nanogpt", "Emerging-Optimizers weight_decay_method='palm'"), ("lr2",)),
)}
"""Every convention decaylab converts between, by name (see the module's table)."""

_ALIASES = {alias: c.name for c in CONVENTIONS.values() for alias in (c.name, *c.aliases)}


def get_convention(name: str | Convention) -> Convention:
    """The :class:`Convention` called ``name`` (its aliases too: decaylab's ``decay_scale`` names,
    ``independent``, ``lr2``).

    >>> get_convention("schedule").name
    'paper'
    """
    if isinstance(name, Convention):
        return name
    key = str(name).lower()
    if key not in _ALIASES:
        aliases = ", ".join(sorted(set(_ALIASES) - set(CONVENTIONS)))
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)} (or {aliases}); got {name!r}")
    return CONVENTIONS[_ALIASES[key]]


# ------------------------------------------------------------------------------------------------- checks


def _positive(name: str, value: Any) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _non_negative(name: str, value: Any) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if not ok:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _peak(conv: Convention, lr: float | None) -> float:
    """``s_peak``; ``lr`` may be None only where ``s_peak`` does not depend on it."""
    if lr is None:
        if conv.peak(1.0) == conv.peak(2.0):  # s_peak does not depend on the lr
            return conv.peak(1.0)
        raise ValueError(f"lr is needed for the {conv.name} convention (decay per step {conv.per_step}): "
                         "give the peak learning rate")
    return conv.peak(_positive("lr", lr))


# ------------------------------------------------------------------------------------------------- schedules

SCHEDULE_KINDS = ("constant", "cosine", "warmup_cosine", "linear")
"""The schedule names :func:`lr_schedule` builds (``linear``: decay from 1 to ``final_lr_ratio``)."""


def lr_schedule(kind: str, steps: int, *, warmup_steps: int = 0, final_lr_ratio: float = 0.0) -> LRSchedule:
    """decaylab's :class:`~decaylab.train.schedules.LRSchedule` for ``kind`` over ``steps`` steps.

    ``linear`` is ``TrainConfig(schedule="constant", callbacks=("lr_factors:1,R",))`` with ``R =
    final_lr_ratio``: ``η_t`` falls linearly from 1 at the first step to ``R`` at the last.
    """
    steps = _count("steps", steps)
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULE_KINDS)}; got {kind!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    ratio = _non_negative("final_lr_ratio", final_lr_ratio)
    if ratio > 1:
        raise ValueError(f"final_lr_ratio must be in [0, 1], got {final_lr_ratio!r}")
    if kind == "warmup_cosine" and warmup_steps == 0:
        raise ValueError("warmup_steps must be >= 1 with schedule 'warmup_cosine'; got 0")
    if kind == "linear":
        return LRSchedule("constant", total_steps=steps, warmup_steps=int(warmup_steps), factors=(1.0, ratio))
    return LRSchedule(kind, total_steps=steps, warmup_steps=int(warmup_steps), final_ratio=ratio)


def _closed_sums(s: LRSchedule) -> tuple[float, float] | None:
    """``(Σ η_t, Σ η_t²)`` over the run in closed form, or None where there is none here."""
    T, W = s.total_steps, s.warmup_steps
    warm1 = (W + 1) / 2 if W else 0.0  # Σ_{t<W} (t+1)/W
    warm2 = (W + 1) * (2 * W + 1) / (6 * W) if W else 0.0  # Σ_{t<W} ((t+1)/W)²
    if s.kind == "constant" and not s.factors:
        return warm1 + (T - W), warm2 + (T - W)
    if s.kind == "constant" and len(s.factors) == 2 and W == 0:  # linear from f0 (step 0) to f1 (step T−1)
        f0, f1 = s.factors
        if T == 1:
            return f0, f0 * f0
        d = (f1 - f0) / (T - 1)
        return T * (f0 + f1) / 2, T * f0 * f0 + f0 * d * T * (T - 1) + d * d * (T - 1) * T * (2 * T - 1) / 6
    if s.kind in ("cosine", "warmup_cosine") and not s.factors:
        # After the warmup, η = r + (1−r)·c_u with c_u = ½(1 + cos(π·u/U)), u = 0..U−1. The cosines
        # cancel in pairs (u, U−u): Σ cos(π·u/U) = 1 and, for U ≥ 2, Σ cos²(π·u/U) = U/2.
        U, r = T - W, s.final_ratio
        c1 = (U + 1) / 2
        c2 = 1.0 if U == 1 else 3 * U / 8 + 0.5
        return warm1 + r * U + (1 - r) * c1, warm2 + r * r * U + 2 * r * (1 - r) * c1 + (1 - r) ** 2 * c2
    return None


def schedule_sums(schedule: LRSchedule, *, closed_form: bool = True) -> tuple[int, float, float]:
    """``(T, Σ_t η_t, Σ_t η_t²)`` over the ``T`` steps of ``schedule`` (``t = 0 … T−1``, as trained).

    Closed forms for ``constant`` (with warmup), ``cosine``/``warmup_cosine`` (with warmup and a final
    ratio ``r``: after ``W`` warmup steps, ``Σ η = r·U + (1−r)(U+1)/2`` over the ``U = T − W`` cosine
    steps) and linear decay; any other schedule is summed step by step (``closed_form=False`` always sums).

    >>> schedule_sums(lr_schedule("cosine", steps=4))   # η = 1, .8536, .5, .1464
    (4, 2.5, 2.0)
    """
    if not isinstance(schedule, LRSchedule):
        raise ValueError(f"schedule must be a decaylab.train.schedules.LRSchedule (see lr_schedule()); "
                         f"got {type(schedule).__name__}")
    sums = _closed_sums(schedule) if closed_form else None
    if sums is None:
        etas = [schedule(t) for t in range(schedule.total_steps)]
        sums = (math.fsum(etas), math.fsum(e * e for e in etas))
    return schedule.total_steps, sums[0], sums[1]


def total_scale(conv: str | Convention, lr: float | None, *, steps: int | None = None,
                schedule: LRSchedule | None = None) -> float:
    """``Σ_t s_t`` over the run: ``s_peak·Σ η_t^p`` (a constant lr over ``steps`` steps when no
    ``schedule`` is given). Multiply by λ for the integrated decay in e-folds."""
    conv = get_convention(conv)
    s_peak = _peak(conv, lr)
    if schedule is None:
        if steps is None:
            raise ValueError("steps (or schedule) is needed for the integrated decay: give the run's length")
        return s_peak * _count("steps", steps)
    if steps is not None and steps != schedule.total_steps:
        raise ValueError(f"steps ({steps}) differs from the schedule's total_steps ({schedule.total_steps})")
    return s_peak * schedule_sums(schedule)[conv.power]


# ------------------------------------------------------------------------------------------------- conversions

MATCHES = ("peak", "integrated")


def convert(weight_decay: float, *, lr: float | None, source: str | Convention, target: str | Convention,
            match: str = "peak", steps: int | None = None, schedule: LRSchedule | None = None) -> float:
    """λ in convention ``target`` equivalent to ``weight_decay`` in ``source``.

    ``match="peak"``: the same decay per step at the peak lr (``λ_B = λ_A·s_peak,A/s_peak,B``);
    ``match="integrated"``: the same ``Σ_t s_t·λ`` over the run (needs ``steps`` or ``schedule``).

    >>> round(convert(0.1, lr=1e-3, source="torch", target="palm"), 9)   # 0.1·1e-3 / 1e-3²
    100.0
    """
    weight_decay = _non_negative("weight_decay", weight_decay)
    src, dst = get_convention(source), get_convention(target)
    if match not in MATCHES:
        raise ValueError(f"match must be one of {', '.join(MATCHES)}; got {match!r}")
    if match == "peak":
        return weight_decay * _peak(src, lr) / _peak(dst, lr)
    return weight_decay * total_scale(src, lr, steps=steps, schedule=schedule) / \
        total_scale(dst, lr, steps=steps, schedule=schedule)


def conversions(weight_decay: float, *, lr: float, source: str | Convention = "torch",
                steps: int | None = None, schedule: LRSchedule | None = None) -> dict[str, dict[str, float]]:
    """``{convention: {"peak": λ, "integrated": λ}}`` for every convention (``integrated`` only when
    the run's length is known)."""
    out = {}
    for name in CONVENTIONS:
        row = {"peak": convert(weight_decay, lr=lr, source=source, target=name)}
        if steps is not None or schedule is not None:
            row["integrated"] = convert(weight_decay, lr=lr, source=source, target=name, match="integrated",
                                        steps=steps, schedule=schedule)
        out[name] = row
    return out


# ------------------------------------------------------------------------------------------------- timescales


def tau_iter(weight_decay: float, lr: float | None, convention: str | Convention = "torch") -> float:
    """``τ_iter = 1/(s_peak·λ)`` optimizer steps (``inf`` for λ = 0).

    >>> tau_iter(0.1, 1e-3)
    10000.0
    """
    s_peak = _peak(get_convention(convention), lr)
    return float(ema_timescale(s_peak, _non_negative("weight_decay", weight_decay)).iterations)


def tau_epoch(weight_decay: float, lr: float | None, *, batch_size: int, dataset_size: int,
              convention: str | Convention = "torch") -> float:
    """``τ_epoch = τ_iter·B/N`` epochs (Wang & Aitchison).

    >>> tau_epoch(0.1, 1e-3, batch_size=128, dataset_size=50_000)
    25.6
    """
    s_peak = _peak(get_convention(convention), lr)
    tau = ema_timescale(s_peak, _non_negative("weight_decay", weight_decay),
                        batch_size=_count("batch_size", batch_size), n_train=_count("dataset_size", dataset_size))
    return float(tau.epochs)


def tau_run_fraction(weight_decay: float, lr: float | None, *, steps: int,
                     convention: str | Convention = "torch") -> float:
    """``τ_iter / steps``: Power Lines' ``τ = B/(η·λ·D)`` with ``D = steps·B`` examples seen.

    >>> tau_run_fraction(0.1, 1e-3, steps=10_000)
    1.0
    """
    return tau_iter(weight_decay, lr, convention) / _count("steps", steps)


def integrated_decay(weight_decay: float, lr: float | None, *, steps: int | None = None,
                     schedule: LRSchedule | None = None, convention: str | Convention = "torch") -> float:
    """``Σ_t s_t·λ`` in e-folds: decay alone leaves ``≈ exp(−Σ_t s_t·λ)`` of the initial weights."""
    return _non_negative("weight_decay", weight_decay) * total_scale(convention, lr, steps=steps, schedule=schedule)


def angular_update(weight_decay: float, lr: float | None, *, beta: float = 0.9,
                   convention: str | Convention = "torch") -> float:
    """Kosson et al.'s equilibrium angular update per step at peak lr, ``sqrt(2·s_peak·λ·(1−β)/(1+β))``
    radians: AdamW with ``β = β₁``, SGD with decoupled decay (SGDW) with ``β = μ``. It holds for
    scale-invariant weights (behind a normalization layer) once the norm has settled.

    >>> round(angular_update(0.1, 1e-2, beta=0.9), 6)
    0.01026
    """
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 <= beta < 1:
        raise ValueError(f"beta must be a number in [0, 1), got {beta!r}")
    s_peak = _peak(get_convention(convention), lr)
    return float(equilibrium_angular_update(s_peak * _non_negative("weight_decay", weight_decay), float(beta)))


def equilibrium_rms(weight_decay: float, lr: float, *, convention: str | Convention = "torch") -> float:
    """Kosson et al.'s equilibrium weight norm per coordinate ``‖w‖/√C = lr/sqrt(2·s_peak·λ)`` of a
    scale-invariant weight under AdamW at peak lr (``sqrt(lr/(2λ))`` in torch's convention; ``inf``
    with λ = 0). The weights of a normalized layer settle there after a few τ_iter, whatever their
    initial scale; momentum does not move it.

    >>> round(equilibrium_rms(0.1, 1e-2), 6)
    0.223607
    """
    lr = _positive("lr", lr)
    s_peak = _peak(get_convention(convention), lr)
    return float(equilibrium_weight_rms(lr, s_peak * _non_negative("weight_decay", weight_decay)))


# ------------------------------------------------------------------------------------------------- λ from a timescale


def _from_tau_iter(tau: float, lr: float | None, conv: str | Convention) -> float:
    return 1.0 / (_positive("tau", tau) * _peak(get_convention(conv), lr))


def tau_iters(tau: float, *, lr: float | None = None, convention: str | Convention = "torch") -> float:
    """λ with ``τ_iter = tau`` steps: ``λ = 1/(τ·s_peak)`` (torch: ``1/(τ·lr)``).

    ``lr`` is the peak learning rate; the ``paper`` and ``constant`` conventions do not need it.
    """
    return _from_tau_iter(tau, lr, convention)


def tau_epochs(tau: float, *, lr: float | None = None, batch_size: int, dataset_size: int,
               convention: str | Convention = "torch") -> float:
    """λ with ``τ_epoch = tau`` epochs: ``λ = B/(τ·N·s_peak)`` (torch: ``B/(τ·N·lr)``).

    >>> tau_epochs(5, batch_size=128, dataset_size=50_000, convention="paper")
    0.000512
    """
    steps_per_tau = _positive("tau", tau) * _count("dataset_size", dataset_size) / _count("batch_size", batch_size)
    return _from_tau_iter(steps_per_tau, lr, convention)


def tau_fraction(fraction: float, *, lr: float | None = None, steps: int,
                 convention: str | Convention = "torch") -> float:
    """λ with ``τ_iter = fraction·steps`` (Power Lines' ``τ``): ``λ = 1/(fraction·steps·s_peak)``.

    >>> tau_fraction(0.5, lr=1e-3, steps=10_000)
    0.2
    """
    return _from_tau_iter(_positive("fraction", fraction) * _count("steps", steps), lr, convention)


# ------------------------------------------------------------------------------------------------- all at once


@dataclass
class Timescales:
    """What one λ means for one run (see :func:`timescales`); ``None`` where a size was not given."""

    weight_decay: float
    convention: str
    lr: float
    tau_iter: float
    tau_epoch: float | None
    tau_fraction: float | None
    epochs: float | None
    integrated_decay: float | None
    angular_update: float
    beta: float
    equilibrium_rms: float = math.inf
    weight_decay_in: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; ``weight_decay`` maps every convention to λ at equal peak decay, and
        ``weight_decay_integrated`` (with a run length) at equal integrated decay."""
        out = {"lr": self.lr, "convention": self.convention, "weight_decay_given": self.weight_decay,
               "tau_iter": self.tau_iter, "tau_epoch": self.tau_epoch, "tau_fraction": self.tau_fraction,
               "epochs": self.epochs, "integrated_decay_efolds": self.integrated_decay,
               "angular_update_rad": self.angular_update, "beta1": self.beta,
               "equilibrium_weight_rms": self.equilibrium_rms if math.isfinite(self.equilibrium_rms) else None,
               "weight_decay": {name: row["peak"] for name, row in self.weight_decay_in.items()}}
        if any("integrated" in row for row in self.weight_decay_in.values()):
            out["weight_decay_integrated"] = {name: row["integrated"] for name, row in self.weight_decay_in.items()}
        return out


def timescales(weight_decay: float, *, lr: float, convention: str | Convention = "torch", steps: int | None = None,
               batch_size: int | None = None, dataset_size: int | None = None,
               schedule: LRSchedule | None = None, beta: float = 0.9) -> Timescales:
    """Every timescale and conversion of one λ: ``τ_iter``; ``τ_epoch`` (with ``batch_size`` and
    ``dataset_size``); ``τ`` as a fraction of the run and the integrated decay (with ``steps`` or a
    ``schedule``); the equilibrium angular update and AdamW's equilibrium weight norm at peak lr; λ in
    every convention."""
    conv = get_convention(convention)
    lr = _positive("lr", lr)
    if schedule is not None and steps is None:
        steps = schedule.total_steps
    if (batch_size is None) != (dataset_size is None):
        missing = "dataset_size" if dataset_size is None else "batch_size"
        raise ValueError(f"{missing} is needed too: τ_epoch = τ_iter·batch_size/dataset_size needs both")
    tau_e = None if batch_size is None else tau_epoch(weight_decay, lr, batch_size=batch_size,
                                                      dataset_size=dataset_size, convention=conv)
    epochs = None if steps is None or batch_size is None else steps * batch_size / dataset_size
    return Timescales(
        weight_decay=_non_negative("weight_decay", weight_decay), convention=conv.name, lr=lr,
        tau_iter=tau_iter(weight_decay, lr, conv), tau_epoch=tau_e,
        tau_fraction=None if steps is None else tau_run_fraction(weight_decay, lr, steps=steps, convention=conv),
        epochs=epochs,
        integrated_decay=None if steps is None else integrated_decay(weight_decay, lr, steps=steps,
                                                                     schedule=schedule, convention=conv),
        angular_update=angular_update(weight_decay, lr, beta=beta, convention=conv), beta=float(beta),
        equilibrium_rms=equilibrium_rms(weight_decay, lr, convention=conv),
        weight_decay_in=conversions(weight_decay, lr=lr, source=conv, steps=steps, schedule=schedule),
    )


# ------------------------------------------------------------------------------------------------- recommendations


@dataclass(frozen=True)
class Recommendation:
    """A rule from the literature: what it says, where it comes from, what it was measured on, and
    what it says about the setting at hand (``assessment``; empty when the setting lacks the sizes)."""

    name: str
    rule: str
    source: str
    measured_on: str
    assessment: str = ""


def recommendations(ts: Timescales) -> list[Recommendation]:
    """The rules of the literature that apply to a setting, each with its source. decaylab ships no
    fitted constant it could not confirm in the papers (Power Lines' fitted power law is one)."""
    out = []
    if ts.tau_epoch is not None:
        note = f"τ_epoch = {ts.tau_epoch:.3g}"
        if ts.epochs is not None:
            inside = 1 <= ts.tau_epoch <= ts.epochs
            note += (f": {'inside' if inside else 'OUTSIDE'} the guideline range [1, {ts.epochs:.3g}] "
                     f"(1 epoch to the run's epochs)")
        out.append(Recommendation(
            "constant τ_epoch", "keep τ_epoch = B/(η·λ·N) fixed when model and dataset grow: λ falls as the "
                                "dataset grows; guideline: τ_epoch between about 1 epoch and the run's epochs",
            "Wang & Aitchison, ICML 2025 (arXiv 2405.13698)",
            "ResNet-18 and ViT on CIFAR-10 and ImageNet, NanoGPT on OpenWebText (AdamW)", note))
    out.append(Recommendation(
        "Power Lines τ", "τ = B/(η·λ·D) as a fraction of the run: optimal λ grows linearly with B at fixed model "
                         "and data; optimal τ follows a power law in tokens per parameter D/N (its fitted constants "
                         "are in the paper; decaylab does not ship them)",
        "Bergsma et al. 2025 (arXiv 2505.13738)", "LLM pre-training with AdamW and μP (Cerebras)",
        "" if ts.tau_fraction is None else f"τ = {ts.tau_fraction:.3g} of this run"))
    out.append(Recommendation(
        "independent decay under μP", "when μP scales the learning rate with width, use λ per step independent "
                                      "of the lr (the 'constant' convention)",
        "Kosson et al. 2025 (arXiv 2510.19093)", "LLaMA-style LLMs and ResNets across widths",
        f"λ_constant = {ts.weight_decay_in['constant']['peak']:.4g} (equal decay at peak lr)"))
    out.append(Recommendation(
        "λ ∝ √width under μP", "with μP's η ∝ 1/d for matrices, scale their λ ∝ √d; vectors (gains, biases): "
                               "λ = 0 at η = Θ(1)",
        "Fan et al. 2025 (arXiv 2510.15262)", "LLaMA-style Transformers, AdamW, across widths"))
    return out
