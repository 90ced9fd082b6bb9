r"""What a run needs beyond the loop, as named plug-ins: ``callbacks = ["ema:0.999", "jacobian:64"]``.

A reproduction that needs a knob (a weight-decay window, a loss scale, a probe, EMA weights, an lr
curve) names a callback in its spec; it does not add a field to :class:`~decaylab.train.TrainConfig`.
A callback is written ``name`` or ``name:ARGS`` and resolved from :data:`CALLBACKS`:

========================================  ============================================================================
``ema:BETA``                              an EMA of the weights, ``w̄ ← β·w̄ + (1−β)·w`` each step; final metrics
                                          ``ema_*`` of the average (BatchNorm statistics recomputed), its norm
``jacobian:N``                            final metric ``jacobian_norm``: mean ‖∂logits/∂w‖_F over the first N test
                                          inputs ("Why WD", vision)
``loss_scale:C``                          the training loss is multiplied by C (scale-freeness); evaluation is not
``lr_factors:F0,F1,...``                  ``η_t`` times the piecewise-linear curve through the F at evenly spaced
                                          fractions of the run (an lr given as a table, e.g. measured from another run)
``decay_window:A-B[,C-D...]``             λ acts only in the ``[A, B)``, ``[C, D)``, … fractions of the run (early
                                          decay is ``0-0.5``, late ``0.5-1``); ``,matched`` scales λ so that the
                                          integrated decay ``Σ_t s_t·λ_t`` equals that of λ over the whole run
``optimizer_state:DTYPE[,stochastic]``    the optimizer's running averages stored in ``bf16``/``fp16``/``fp32``
                                          (decaylab's ``state_dtype``; ``,stochastic``: stochastic rounding of bf16
                                          state, ``state_rounding``), e.g. to measure the drift bf16 state causes
========================================  ============================================================================

The loop calls every callback at fixed points, top to bottom: :meth:`Callback.lr_factor` (each step's lr),
:meth:`Callback.weight_decay` (the decayed group's λ, once), :meth:`Callback.loss_scale`,
:meth:`Callback.start` (after the optimizer is built; EMA makes its average), :meth:`Callback.after_step`,
:meth:`Callback.final` (per-model final metrics); :meth:`Callback.state_dict` goes into checkpoints.
A new callback is one class here with :func:`register`; specs, the command line and the store take it
as they are.

The fields these knobs were before (``decay_schedule``/``decay_switch``, ``ema_beta``, ``loss_scale``,
``lr_factors``, ``jacobian_probe``) still load from old specs, stores and run configs:
:func:`from_legacy` maps them, and :meth:`TrainConfig.key` hashes a callback that has such a field as
that field (:meth:`Callback.legacy`), so the runs of an old store keep their identity.

>>> [str(parse(text)) for text in ("ema:0.9990", "decay_window:0-.5", "lr_factors:1,0.5")]
['ema:0.999', 'decay_window:0-0.5', 'lr_factors:1,0.5']
>>> from_legacy({"decay_schedule": "early", "decay_switch": 0.25, "ema_beta": 0.99, "lr": 0.1})
{'lr': 0.1, 'callbacks': ('decay_window:0-0.25', 'ema:0.99')}
>>> parse("emma:0.9")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: callbacks: unknown callback 'emma' (did you mean 'ema'?); the callbacks are decay_window, ema, ...
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["CALLBACKS", "Callback", "DecayWindow", "EMA", "Jacobian", "LRFactors", "LossScale", "LEGACY_FIELDS",
           "OptimizerState",
           "canonical", "from_legacy", "legacy_fields", "parse", "register"]

CALLBACKS: dict[str, type[Callback]] = {}


def register(cls: type[Callback]) -> type[Callback]:
    """Add a callback class to :data:`CALLBACKS` under its ``name`` (a class decorator)."""
    if cls.name in CALLBACKS:
        raise ValueError(f"a callback named {cls.name!r} is already registered")
    CALLBACKS[cls.name] = cls
    return cls


def _number(text: str) -> str:
    """A number as callbacks print it: the shortest text that reads back as the same float (``0.5``, ``1``)."""
    value = float(text) if isinstance(text, str) else float(text)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


class Callback:
    """A knob of a run. Subclasses set ``name``, ``usage`` and ``help``, parse their arguments in
    :meth:`parse` and print them back in :attr:`args`; every hook is optional (the defaults do nothing)."""

    name: ClassVar[str]
    usage: ClassVar[str]
    help: ClassVar[str]
    weight_copies: ClassVar[int] = 0  # extra copies of the weights it keeps (memory estimates)

    @classmethod
    def parse(cls, args: str) -> Callback:
        raise NotImplementedError

    @property
    def args(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{self.name}:{self.args}" if self.args else self.name

    def _bad(self, what: str, got: Any) -> ValueError:
        return ValueError(f"callbacks: {self.usage}: {what}; got {got!r}")

    @property
    def noop(self) -> bool:
        """Whether it changes nothing (``loss_scale:1``): a config leaves it out, so it is the same run."""
        return False

    def check(self, config: Any) -> None:
        """Raise ``ValueError`` when the callback cannot serve ``config`` (naming both)."""

    def legacy(self) -> dict[str, Any] | None:
        """The TrainConfig fields this knob was before callbacks (None: it never was one)."""
        return None

    # -- hooks, in the order the loop calls them
    def lr_factor(self, t: int, steps: int) -> float:
        return 1.0

    def weight_decay(self, weight_decay: Any, *, steps: int, lr_schedule: Any, decay_scale: str) -> Any:
        return weight_decay

    def loss_scale(self) -> float:
        return 1.0

    def optimizer_options(self) -> dict[str, Any]:
        """Keyword arguments for the optimizer's constructor (checked there like any other)."""
        return {}

    def start(self, run: Any) -> None:
        """After the model and optimizer are built (``run``: the loop's :class:`~decaylab.train.loop.RunState`)."""

    def after_step(self, run: Any) -> None:
        """After each optimizer step."""

    def final(self, run: Any) -> list[dict[str, float]] | None:
        """Final metrics per model, added to each run's ``final`` (None: none)."""
        return None

    def state_dict(self) -> Any:
        return None

    def load_state_dict(self, state: Any) -> None:
        pass


def _real(cb: type[Callback], text: str, what: str, ok: Any) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"callbacks: {cb.usage}: {what}; got {text!r}")
    return value


@register
@dataclass(frozen=True)
class EMA(Callback):
    beta: float
    name: ClassVar[str] = "ema"
    usage: ClassVar[str] = "ema:BETA"
    help: ClassVar[str] = "an EMA of the weights with β = BETA in [0, 1); adds ema_* final metrics"
    weight_copies: ClassVar[int] = 1

    @classmethod
    def parse(cls, args: str) -> EMA:
        return cls(_real(cls, args, "BETA must be a number >= 0 and < 1", lambda v: 0 <= v < 1))

    @property
    def args(self) -> str:
        return _number(self.beta)

    def legacy(self) -> dict[str, Any]:
        return {"ema_beta": self.beta}

    def start(self, run: Any) -> None:
        import torch

        from decaylab.diagnostics import WeightEMA

        # A bf16 average could not resolve (1 − β)·step: keep it in fp32.
        dtype = torch.float32 if run.config.precision == "bf16" else None
        object.__setattr__(self, "_ema", WeightEMA(run.engine.state_module, self.beta, dtype=dtype))

    def after_step(self, run: Any) -> None:
        self._ema.update()

    def final(self, run: Any) -> list[dict[str, float]]:
        return run.evaluator.evaluate_ema(self._ema, run.config)

    def state_dict(self) -> Any:
        return self._ema.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self._ema.load_state_dict(state)


@register
@dataclass(frozen=True)
class Jacobian(Callback):
    inputs: int
    name: ClassVar[str] = "jacobian"
    usage: ClassVar[str] = "jacobian:N"
    help: ClassVar[str] = "final metric jacobian_norm: mean ‖∂logits/∂w‖_F over the first N test inputs"

    @classmethod
    def parse(cls, args: str) -> Jacobian:
        value = _real(cls, args, "N must be an integer >= 1", lambda v: v >= 1 and v.is_integer())
        return cls(int(value))

    @property
    def args(self) -> str:
        return str(self.inputs)

    def legacy(self) -> dict[str, Any]:
        return {"jacobian_probe": self.inputs}

    def check(self, config: Any) -> None:
        if config.is_language_model:
            raise ValueError(f"callbacks: {self} is for classifiers ({config.model!r}: a language model's Jacobian "
                             "has block_size·vocab rows per input)")

    def final(self, run: Any) -> list[dict[str, float]]:
        from decaylab.diagnostics import jacobian_norm

        inputs = run.prepared.x_test[:self.inputs]
        return [{"jacobian_norm": float(jacobian_norm(module, inputs))} for module in run.trained]


@register
@dataclass(frozen=True)
class LossScale(Callback):
    scale: float
    name: ClassVar[str] = "loss_scale"
    usage: ClassVar[str] = "loss_scale:C"
    help: ClassVar[str] = "the training loss times C > 0 (scale-freeness tests); evaluation is unscaled"

    @classmethod
    def parse(cls, args: str) -> LossScale:
        return cls(_real(cls, args, "C must be a number > 0", lambda v: v > 0))

    @property
    def args(self) -> str:
        return _number(self.scale)

    @property
    def noop(self) -> bool:
        return self.scale == 1

    def legacy(self) -> dict[str, Any]:
        return {"loss_scale": self.scale}

    def loss_scale(self) -> float:
        return self.scale


@register
@dataclass(frozen=True)
class LRFactors(Callback):
    factors: tuple[float, ...]
    name: ClassVar[str] = "lr_factors"
    usage: ClassVar[str] = "lr_factors:F0,F1,..."
    help: ClassVar[str] = ("η_t times the piecewise-linear curve through F0, F1, … (>= 0, at least 2) at evenly "
                           "spaced fractions of the run")

    @classmethod
    def parse(cls, args: str) -> LRFactors:
        parts = args.split(",") if args else []
        if len(parts) < 2:
            raise ValueError(f"callbacks: {cls.usage}: needs at least 2 numbers >= 0; got {args!r}")
        return cls(tuple(_real(cls, p, "each factor must be a number >= 0", lambda v: v >= 0) for p in parts))

    @property
    def args(self) -> str:
        return ",".join(_number(f) for f in self.factors)

    def legacy(self) -> dict[str, Any]:
        return {"lr_factors": list(self.factors)}

    def lr_factor(self, t: int, steps: int) -> float:
        from .schedules import piecewise_linear

        return piecewise_linear(self.factors, t, steps)


@register
@dataclass(frozen=True)
class OptimizerState(Callback):
    dtype: str
    rounding: str = "nearest"
    name: ClassVar[str] = "optimizer_state"
    usage: ClassVar[str] = "optimizer_state:DTYPE[,stochastic]"
    help: ClassVar[str] = ("the optimizer's running averages stored in DTYPE (bf16, fp16 or fp32; decaylab's "
                           "state_dtype), bf16 optionally with stochastic rounding (state_rounding)")

    @classmethod
    def parse(cls, args: str) -> OptimizerState:
        from decaylab.optim.precision import STATE_DTYPE_NAMES

        parts = args.split(",") if args else []
        if not parts or parts[0] not in STATE_DTYPE_NAMES or len(parts) > 2 or parts[1:] not in ([], ["stochastic"]):
            raise ValueError(f"callbacks: {cls.usage}: DTYPE one of {', '.join(STATE_DTYPE_NAMES)}, then optionally "
                             f"',stochastic'; got {args!r}")
        if parts[1:] and parts[0] != "bf16":
            raise ValueError(f"callbacks: {cls.usage}: stochastic rounding is for bf16 state; got {args!r}")
        return cls(parts[0], "stochastic" if parts[1:] else "nearest")

    @property
    def args(self) -> str:
        return self.dtype + (",stochastic" if self.rounding == "stochastic" else "")

    def check(self, config: Any) -> None:
        if config.optimizer == "torch-adamw":
            raise ValueError(f"callbacks: {self} needs decaylab's optimizer (optimizer='torch-adamw' keeps its "
                             "state in the parameters' dtype)")

    def optimizer_options(self) -> dict[str, Any]:
        from decaylab.optim.precision import STATE_DTYPE_NAMES

        return {"state_dtype": STATE_DTYPE_NAMES[self.dtype], "state_rounding": self.rounding}


@register
@dataclass(frozen=True)
class DecayWindow(Callback):
    windows: tuple[tuple[float, float], ...]
    matched: bool = False
    name: ClassVar[str] = "decay_window"
    usage: ClassVar[str] = "decay_window:A-B[,C-D...][,matched]"
    help: ClassVar[str] = ("λ only in the [A, B), [C, D), … fractions of the run; matched: λ scaled to the integrated "
                           "decay of the whole run")

    @classmethod
    def parse(cls, args: str) -> DecayWindow:
        parts = [p for p in args.split(",") if p]
        matched = "matched" in parts
        windows = []
        for part in (p for p in parts if p != "matched"):
            start, sep, end = part.partition("-")
            if not sep:
                raise ValueError(f"callbacks: {cls.usage}: each window is START-END, fractions of the run; got "
                                 f"{part!r}")
            a = _real(cls, start, "a window's ends are fractions of the run in [0, 1]", lambda v: 0 <= v <= 1)
            b = _real(cls, end, "a window's ends are fractions of the run in [0, 1]", lambda v: 0 <= v <= 1)
            if b < a:
                raise ValueError(f"callbacks: {cls.usage}: a window must not end before it starts; got {part!r}")
            windows.append((a, b))
        if not windows:
            raise ValueError(f"callbacks: {cls.usage}: needs at least one window; got {args!r}")
        windows.sort()
        if any(w[0] < v[1] for v, w in zip(windows, windows[1:], strict=False)):
            raise ValueError(f"callbacks: {cls.usage}: windows must not overlap; got {args!r}")
        return cls(tuple(windows), matched)

    @property
    def args(self) -> str:
        text = ",".join(f"{_number(a)}-{_number(b)}" for a, b in self.windows)
        return text + (",matched" if self.matched else "")

    def legacy(self) -> dict[str, Any] | None:
        if self.matched or len(self.windows) != 1:
            return None
        start, end = self.windows[0]
        if start == 0:
            return {"decay_schedule": "early", "decay_switch": end}
        if end == 1:
            return {"decay_schedule": "late", "decay_switch": start}
        return None

    def check(self, config: Any) -> None:
        if config.optimizer == "torch-adamw":
            raise ValueError(f"callbacks: {self} needs decaylab's optimizer (optimizer='torch-adamw' is "
                             "torch.optim.AdamW's own constant decay)")

    def weight_decay(self, weight_decay: Any, *, steps: int, lr_schedule: Any, decay_scale: str) -> Any:
        from .schedules import DecayWindows

        spans = tuple((round(a * steps), round(b * steps)) for a, b in self.windows)
        factor = 1.0
        if self.matched:
            factor = _matched_factor(spans, steps, lr_schedule, decay_scale)
        return DecayWindows(weight_decay, spans, factor)


def _matched_factor(spans: Sequence[tuple[int, int]], steps: int, lr_schedule: Any, decay_scale: str) -> float:
    """``Σ_t s_t / Σ_{t in the windows} s_t``: the factor that gives the windows the whole run's integrated
    decay. ``s_t`` by ``decay_scale``, with ``η_t`` the schedule's multiplier (the peak lr cancels)."""
    def s(t: int) -> float:
        eta = lr_schedule(t)
        return {"lr": eta, "schedule": eta, "corrected": eta * eta, "constant": 1.0}[decay_scale]

    whole = sum(s(t) for t in range(steps))
    inside = sum(s(t) for a, b in spans for t in range(a, min(b, steps)))
    if inside <= 0:
        raise ValueError(f"callbacks: decay_window:...,matched: the windows hold no decay to match (steps {spans})")
    return whole / inside


# ---------------------------------------------------------------------------------------------- parsing


def parse(text: str) -> Callback:
    """The callback ``text`` names (``name`` or ``name:ARGS``); ``ValueError`` naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"callbacks: each callback is a string 'name:ARGS'; got {text!r}")
    name, _, args = text.strip().partition(":")
    cls = CALLBACKS.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, CALLBACKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"callbacks: unknown callback {name!r}{hint}; the callbacks are "
                         f"{', '.join(sorted(CALLBACKS))}")
    return cls.parse(args.strip())


def canonical(texts: Iterable[str]) -> tuple[str, ...]:
    """Callback texts as a config holds them: each parsed and printed back, sorted by name, each name once,
    those that change nothing left out (so the same knobs written two ways are one run)."""
    callbacks = [parse(text) for text in texts]
    names = [cb.name for cb in callbacks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"callbacks: each callback may appear once; {', '.join(map(repr, twice))} appears more")
    return tuple(str(cb) for cb in sorted(callbacks, key=lambda cb: cb.name) if not cb.noop)


# ---------------------------------------------------------------------------------------------- the fields they were

#: The TrainConfig fields that were knobs before callbacks, with the default each had (old specs, stores
#: and run configs still name them; their values are checked when they become callbacks).
LEGACY_FIELDS: dict[str, Any] = {"decay_schedule": "constant", "decay_switch": 0.5, "ema_beta": None,
                                 "loss_scale": 1.0, "lr_factors": (), "jacobian_probe": 0}
_LEGACY_TUPLES = ("lr_factors",)


def from_legacy(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (TrainConfig fields) with the old knob fields replaced by the callbacks they mean; the
    others unchanged. A field at its old default means no callback.
    """
    out = {k: v for k, v in values.items() if k not in LEGACY_FIELDS}
    old = {k: values[k] for k in LEGACY_FIELDS if k in values}
    if not old:
        return out
    added = []
    schedule = old.get("decay_schedule", "constant")
    switch = old.get("decay_switch", LEGACY_FIELDS["decay_switch"])
    if schedule not in ("constant", "early", "late"):
        raise ValueError(f"decay_schedule must be one of 'constant', 'early', 'late'; got {schedule!r}")
    if schedule != "constant":
        window = (0, switch) if schedule == "early" else (switch, 1)
        added.append(f"decay_window:{window[0]}-{window[1]}")
    for name, text in (("ema_beta", "ema"), ("loss_scale", "loss_scale"), ("jacobian_probe", "jacobian")):
        value = old.get(name, LEGACY_FIELDS[name])
        if value != LEGACY_FIELDS[name]:
            added.append(f"{text}:{value}")
    factors = old.get("lr_factors", ())
    if factors:
        if not isinstance(factors, (list, tuple)):
            raise ValueError(f"lr_factors must be a list of at least 2 numbers >= 0; got {factors!r}")
        added.append("lr_factors:" + ",".join(str(f) for f in factors))
    try:
        out["callbacks"] = canonical([*values.get("callbacks", ()), *added])
    except ValueError as error:  # name the old field the bad value came from
        raise ValueError(f"{error} (from {', '.join(sorted(old))})") from None
    return out


def legacy_fields(callbacks: Sequence[str]) -> dict[str, Any] | None:
    """The old fields that ``callbacks`` were, at their non-default values (what a run's key hashed before
    callbacks); None when some callback never was a field."""
    out: dict[str, Any] = {}
    for text in callbacks:
        fields = parse(text).legacy()
        if fields is None:
            return None
        out.update(fields)
    return {k: v for k, v in out.items() if v != LEGACY_FIELDS[k] and not (k in _LEGACY_TUPLES and not v)}
