"""What every executor shares: the bucket's spec, the bucket, the executor interface, and small helpers.

A *bucket* is the tensors of one param group that share device, dtype and layout. Its
:class:`BucketSpec` holds what is fixed for it (the direction, the rule, flags, the direction's
options such as ``eps``); the ``hp`` dict holds what may move (``lr``, ``lam``, ``s``, the
direction's per-step scalars such as Adam's ``beta1``/``beta2``, and ``mean_vhat`` for rules that
need it) as tensors of the compute dtype, 0-dim for one model or shape ``(K,)`` for ``K`` models
stacked along dim 0; the ``pp`` dict holds per-tensor values of the step (Adam's bias corrections).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import precision
from ..directions.base import Direction
from ..rules import DecayRule
from ..tensorlist import TensorList


@dataclass(frozen=True)
class BucketSpec:
    """What is fixed for one bucket's step (hashable: it keys the compiled graphs).

    The direction's options (``eps``, ``amsgrad``, ``momentum``, ``nesterov``, …) are attributes
    too: ``spec.amsgrad`` reads ``options``.
    """

    direction: Direction
    rule: DecayRule
    to_init: bool = False
    maximize: bool = False
    low_precision: str = "none"  # "none" | "kahan" | "stochastic" | "exact", for 16-bit params
    stacked: bool = False
    options: tuple[tuple[str, Any], ...] = ()
    state_dtype: torch.dtype = torch.float32  # the running averages' storage (precision.state_dtype)
    state_rounding: str = "nearest"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        for key, value in self.options:  # a field: found without __getattr__
            if key == name:
                return value
        raise AttributeError(f"BucketSpec has no field or option {name!r}")

    @property
    def form(self) -> str:
        """The rule's name (what param groups call ``decay``)."""
        return self.rule.name

    @property
    def global_statistic(self) -> bool:
        """Does the step need every tensor's moments before any update (``mean v̂`` summed over the bucket)?"""
        return "mean_vhat" in self.rule.needs and self.direction.statistic == "sum"

    @property
    def state_keys(self) -> tuple[str, ...]:
        keys = self.direction.state_keys(self)
        if self.to_init:
            keys += ("init_param",)
        if self.low_precision == "kahan":
            keys += ("kahan_comp",)
        if self.low_precision == "exact":
            keys += ("param_remainder",)
        return keys

    def describe(self) -> str:
        return f"{self.direction.name} with decay={self.rule.name!r}"


@dataclass
class Bucket:
    """One bucket's step: its tensors, state lists, hyperparameters and per-tensor values."""

    spec: BucketSpec
    params: list[Tensor]
    grads: list[Tensor]
    states: dict[str, list[Tensor]]
    hp: dict[str, Any]
    pp: dict[str, Any]
    carried: CarriedSums | None = None
    raw: dict[str, Any] | None = None  # the group's own numbers of this step (Python floats or tensors), unrounded
    global_params: list[Tensor] | None = None  # the whole parameters, when ``params`` are a rank's local shards

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def models(self) -> int:
        return self.params[0].shape[0] if self.spec.stacked else 1


class Executor:
    """Runs a bucket's step. Each executor answers one question — why can't you run this? — and runs.

    ``why_not_spec`` judges what is fixed for a bucket (the direction, the rule and its lowerings,
    flags), ``why_not_param`` one parameter alone (device, dtype); ``why_not`` the whole bucket at
    step time (adding layouts, gradients, state). Each returns a reason, or None.
    A step whose rule needs a global statistic runs in two phases over every bucket of the step:
    :meth:`moments` (returns the bucket's sum of ``v̂``, one per model) and :meth:`update`.
    """

    name: str = ""

    def why_not_spec(self, spec: BucketSpec) -> str | None:
        return None

    def why_not_param(self, p: Tensor) -> str | None:
        """What about parameter ``p`` alone (device, dtype) rules it out, or None."""
        return None

    def why_not(self, bucket: Bucket) -> str | None:
        return self.why_not_spec(bucket.spec)

    def step(self, bucket: Bucket) -> None:
        raise NotImplementedError

    def moments(self, bucket: Bucket) -> Any:
        raise NotImplementedError

    def update(self, bucket: Bucket) -> None:
        raise NotImplementedError


class CarriedSums:
    """``Σv`` of each second-moment tensor after the last fused or native stable step.

    The stable form needs ``mean v̂_t`` before any weight moves; the fast paths get it from
    ``β₂·Σv_{t−1} + (1−β₂)·Σg²``, so a step reads ``g`` once more and ``v`` not at all. Held by the
    optimizer: id(v) -> (a weak reference to v, v._version after that step, the sums: one per
    stacked model). Any other write to v (another backend, ``load_state_dict``, a user) changes the
    version or the tensor, and the sum is then read afresh. (Keyed by id: a WeakKeyDictionary
    compares tensors with ==, elementwise.)
    """

    def __init__(self) -> None:
        self._sums: dict[int, tuple[weakref.ref, int, list[float]]] = {}

    def get(self, v: Tensor) -> list[float] | None:
        entry = self._sums.get(id(v))
        if entry is not None and entry[0]() is v and entry[1] == v._version:
            return entry[2]
        return None

    def put(self, v: Tensor, total: list[float]) -> None:
        if len(self._sums) > 4096:  # drop the entries of tensors that are gone
            for key in [k for k, e in self._sums.items() if e[0]() is None]:
                del self._sums[key]
        entry = self._sums.get(id(v))
        ref = entry[0] if entry is not None and entry[0]() is v else weakref.ref(v)
        self._sums[id(v)] = (ref, v._version, total)

    def clear(self) -> None:
        self._sums.clear()


# --------------------------------------------------------------------------- helpers of the specification


def expand(h, x):
    """Broadcast a per-model hyperparameter of shape (K,) against ``x`` (stacked along dim 0)."""
    if not isinstance(h, Tensor) or h.dim() == 0:
        return h
    if isinstance(x, TensorList):
        return TensorList([h.view(-1, *([1] * (t.dim() - 1))) for t in x.items])
    return h.view(-1, *([1] * (x.dim() - 1)))


def expand_all(hp: dict, x) -> dict:
    return {k: expand(v, x) for k, v in hp.items()}


def compute(x):
    """Read a stored tensor in the compute dtype (fp32 for 16-bit storage)."""
    if x is None:
        return None
    dtype = x.items[0].dtype if isinstance(x, TensorList) else x.dtype
    return x.float() if dtype in precision.LOW_PRECISION else x


def plain_cpu_float(p: Tensor) -> str | None:
    """Why ``p`` is not a CPU float32/float64 tensor (what torch's fused CPU kernels and the C step take), or None."""
    if p.device.type != "cpu":
        return f"the parameter is on {p.device.type}, not the CPU"
    if p.dtype not in (torch.float32, torch.float64):
        return f"the parameter's dtype is {p.dtype}, not float32 or float64"
    return None


__all__ = ["BucketSpec", "Bucket", "Executor", "CarriedSums", "expand", "expand_all", "compute", "plain_cpu_float"]
