"""The foreach executor: a bucket at a time with multi-tensor (``torch._foreach_*``) kernels.

Two ways, one result (tested against the reference in float64, state included):

* **in place** — for a direction and a rule that have in-place lowerings (``foreach_moments_`` /
  ``foreach_update_`` on the direction, ``apply_`` on the rule: every built-in one), decaying toward
  zero, in fp32/fp64: the state and the weights are updated in place, as torch's own foreach Adam
  does, with one or two temporaries per step instead of a fresh tensor per operation.
* **on TensorLists** — everything else (a user's rule, ``decay_to="init"``, 16-bit parameters): the
  reference's own code (:mod:`.reference`) on :class:`TensorList` objects, where ``a * b + c`` is a
  handful of multi-tensor kernels instead of a Python loop over tensors.

Elementwise only; any device and dtype.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .. import precision
from ..tensorlist import TensorList
from .base import Bucket, Executor, expand
from .reference import moments_from_state, tensor_moments, tensor_update


def _lists(bucket: Bucket):
    return (TensorList(bucket.params), {k: TensorList(v) for k, v in bucket.states.items()},
            {k: TensorList(v) for k, v in bucket.pp.items()})


def in_place(bucket: Bucket) -> bool:
    """Does this bucket take the in-place lowering? (16-bit storage computes in fp32: only the exact
    mode, whose fp32 master is rebuilt for the step, does.)"""
    spec = bucket.spec
    direction, rule = spec.direction, spec.rule
    state_ok = all(t.dtype == precision.compute_dtype(bucket.params[0].dtype)
                   for key, v in bucket.states.items() if key not in ("param_remainder", "kahan_comp") for t in v)
    return (direction.foreach_moments_ is not None and direction.foreach_update_ is not None
            and (rule.acts == "gradient" or rule.apply_ is not None) and not spec.to_init and state_ok
            and (bucket.params[0].dtype not in precision.LOW_PRECISION or spec.low_precision == "exact"))


class _Masters:
    """The exact mode in place: the bucket's fp32 masters for the step, split back into bf16 + remainder."""

    def __init__(self, bucket: Bucket):
        self.bucket = bucket
        self.masters = [precision._join(p, r) for p, r in zip(bucket.params, bucket.states["param_remainder"],
                                                              strict=True)]
        self.view = dataclasses.replace(bucket, params=self.masters,
                                        grads=[g.float() for g in bucket.grads])

    def write_back(self) -> None:
        for p, r, w in zip(self.bucket.params, self.bucket.states["param_remainder"], self.masters, strict=True):
            upper, remainder = precision._split(w)
            p.copy_(upper)
            r.copy_(remainder)


def _per_tensor(x, params: list[Tensor], stacked: bool) -> list:
    """A hyperparameter as one value per tensor: a Python float on the CPU (no sync, torch's scalar
    kernels), else the (expanded, for K stacked models) tensor itself."""
    if stacked and isinstance(x, Tensor) and x.dim() == 1:
        return [expand(x, p) for p in params]
    if isinstance(x, Tensor):
        return [x] * len(params) if not x.is_cpu else [float(x)] * len(params)
    return [float(x)] * len(params)


class Foreach(Executor):
    name = "foreach"

    def why_not_spec(self, spec):
        if not spec.direction.elementwise:
            return f"the {spec.direction.name} direction is not element-wise"
        return None

    # ------------------------------------------------------------------ in place

    def _gradients(self, bucket: Bucket) -> list[Tensor]:
        spec = bucket.spec
        g = bucket.grads
        if spec.maximize:
            g = torch._foreach_neg(g)
        if spec.rule.acts == "gradient":
            params = TensorList(bucket.params)
            g = spec.rule.gradient(TensorList(g), params, None, expand(bucket.hp["lam"], params)).items
        return g

    def _update_(self, bucket: Bucket, g: list[Tensor]) -> None:
        spec, hp, params = bucket.spec, bucket.hp, bucket.params
        rule = spec.rule
        if rule.acts == "gradient":
            strength = None
        else:
            value = rule.strength(hp["s"], hp["lam"], hp.get("mean_vhat"), spec.direction.rule_eps(spec))
            strength = _per_tensor(value, params, spec.stacked)
        lr = _per_tensor(bucket.raw["lr"] if not isinstance(bucket.raw["lr"], Tensor) else hp["lr"], params,
                         spec.stacked)
        spec.direction.foreach_update_(bucket, g, strength, lr)

    # ------------------------------------------------------------------ the executor

    def step(self, bucket: Bucket) -> None:
        spec = bucket.spec
        if in_place(bucket):
            exact = _Masters(bucket) if spec.low_precision == "exact" else None
            view = exact.view if exact else bucket
            g = self._gradients(view)
            spec.direction.foreach_moments_(view, g)
            self._update_(view, g)
            if exact:
                exact.write_back()
            return
        P, S, PP = _lists(bucket)
        hp = bucket.hp
        tensor_update(spec, P, S, tensor_moments(spec, P, TensorList(bucket.grads), S, hp, PP), hp, PP)

    def moments(self, bucket: Bucket):
        spec = bucket.spec
        P, S, PP = _lists(bucket)
        if in_place(bucket):
            exact = _Masters(bucket) if spec.low_precision == "exact" else None
            view = exact.view if exact else bucket
            g = self._gradients(view)
            spec.direction.foreach_moments_(view, g)
            bucket.pp["_g"] = g  # the update needs it again (SGD's u)
            bucket.pp["_exact"] = exact
            new = moments_from_state(spec, S)
        else:
            new = tensor_moments(spec, P, TensorList(bucket.grads), S, bucket.hp, PP)
        return spec.direction.vhat_sum(spec, new, PP) if spec.global_statistic else 0

    def update(self, bucket: Bucket) -> None:
        spec = bucket.spec
        if in_place(bucket):
            exact = bucket.pp.pop("_exact")
            view = dataclasses.replace(exact.view, hp=bucket.hp) if exact else bucket
            self._update_(view, bucket.pp.pop("_g"))
            if exact:
                exact.write_back()
            return
        P, S, PP = _lists(bucket)
        tensor_update(spec, P, S, moments_from_state(spec, S), bucket.hp, PP)
