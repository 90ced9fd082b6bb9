"""The native executor: decaylab's own C step (``_native.c``), every built-in rule in one pass over memory.

torch's fused Adam kernel expresses only the rules that are an AdamW step with other constants; the
others (``prox_euclid``, ``cautious``, ``stable``) and stacked models with one lr and λ each need
their own loop. ``_native.c`` is that loop, for Adam and SGD: a rule runs here when it has a C loop
(its ``native`` number, :mod:`decaylab.optim.rules`) and gives the per-model constant the loop reads
(:meth:`~decaylab.optim.rules.DecayRule.native_constant`). K stacked models run in one call.
:mod:`.build` compiles and loads the library.

The C code takes raw pointers: before every call, the sizes of every tensor it is given are checked
against the parameter's (a state loaded from a checkpoint of another model must never be read past).
"""
from __future__ import annotations

import array
import ctypes
import math

import torch
from torch import Tensor

from ..base import Bucket, BucketSpec, Executor, plain_cpu_float
from . import build

NATIVE_DIRECTIONS = ("adam", "sgd")


def _floats(x, k: int) -> list[float]:
    """A hyperparameter (0-dim or (K,) tensor, or number) as K Python floats."""
    if isinstance(x, Tensor):
        values = x.tolist()
        return values if isinstance(values, list) else [values] * k
    return [float(x)] * k


class Native(Executor):
    name = "native"

    def why_not_spec(self, spec: BucketSpec) -> str | None:
        if spec.direction.name not in NATIVE_DIRECTIONS:
            return f"the {spec.direction.name} direction has no native step"
        if spec.rule.native is None:
            return f"decay={spec.rule.name!r} has no loop in the native step"
        if spec.to_init:
            return "decay_to='init'"
        if spec.low_precision != "none":
            return f"16-bit parameters with low_precision={spec.low_precision!r}"
        return None

    def why_not_param(self, p: Tensor) -> str | None:
        return plain_cpu_float(p) or build.why_not()

    def why_not(self, bucket: Bucket) -> str | None:
        why = self.why_not_spec(bucket.spec)
        if why:
            return why
        p0 = bucket.params[0]
        why = plain_cpu_float(p0)
        if why:
            return why
        if type(p0.data) is not Tensor:
            return "the parameters are sharded (DTensor)"
        if not build.available():
            return build.why_not()
        # (A bucket holds one device and dtype: its first parameter answers for those.)
        dtype = p0.dtype
        if not all(p.is_contiguous() for p in bucket.params):
            return "a parameter is not contiguous"
        if not all(g.dtype == dtype and g.is_cpu for g in bucket.grads):
            return "a gradient's dtype or device differs from its parameter's"
        if not all(t.dtype == dtype and t.is_contiguous() for v in bucket.states.values() for t in v):
            return "a state tensor is not contiguous or has another dtype"
        return None

    def step(self, bucket: Bucket) -> None:
        if bucket.spec.direction.name == "sgd":
            _sgd_call(bucket)
        else:
            _adam_call(bucket, _constants(bucket))

    def moments(self, bucket: Bucket):
        """The sum of ``v̂_t`` over the bucket (one per model when stacked), before any write.

        As on the fused path, ``Σv_{t−1}`` is carried per tensor (and model) from this path's previous
        step, so the pre-pass reads only ``g`` (``Σv_t = β₂·Σv_{t−1} + (1−β₂)·Σg_t²``); a tensor whose
        sum is not carried reads ``g`` and ``v``, and amsgrad reads ``g``, ``v`` and ``v_max``.
        """
        spec, pp, hp = bucket.spec, bucket.pp, bucket.hp
        params = bucket.params
        n, k = len(params), bucket.models()
        grads = [g if g.is_contiguous() else g.contiguous() for g in bucket.grads]
        pp["grad"] = grads  # the update reads them again: copy a non-contiguous one once
        v, vmax = bucket.states["exp_avg_sq"], bucket.states.get("max_exp_avg_sq") or [None] * n
        _check_sizes(params, {"grad": grads, "exp_avg_sq": v, "max_exp_avg_sq": vmax})
        carried = [None if spec.amsgrad else bucket.carried.get(t) for t in v]
        modes = [2 if spec.amsgrad else (0 if c is not None else 1) for c in carried]
        ptrs = (ctypes.c_void_p * (3 * n))()
        ptrs[0::3] = [t.data_ptr() for t in grads]
        ptrs[1::3] = [t.data_ptr() for t in v]
        ptrs[2::3] = [None if t is None else t.data_ptr() for t in vmax]
        coef, sizes = _layout(bucket)
        sums = (ctypes.c_double * (n * k))()
        status = _fn("sums", params[0].dtype)(
            n, ptrs, *sizes, coef, (ctypes.c_int * n)(*modes), sums,
            (ctypes.c_int64 * n)(*range(0, n * k, k)), torch.get_num_threads())
        if status != 0:
            raise MemoryError("decaylab's native pre-pass could not allocate its work list")
        beta2 = float(hp["beta2"])
        c2 = {id(c): float(c) for c in pp["inv_bias_correction2_sqrt"]}  # one per distinct step count
        totals = [0.0] * k
        new = []
        for i, (c, before) in enumerate(zip(pp["inv_bias_correction2_sqrt"], carried, strict=True)):
            row = sums[i * k:(i + 1) * k]
            if before is not None:  # mode 0: the pre-pass summed g²
                row = [beta2 * b + (1 - beta2) * gg for b, gg in zip(before, row, strict=True)]
            new.append(row)
            cc = c2[id(c)]
            totals = [t + x * cc * cc for t, x in zip(totals, row, strict=True)]
        pp["_v_sums"] = None if spec.amsgrad else new
        return torch.tensor(totals if spec.stacked else totals[0], dtype=torch.float64)

    def update(self, bucket: Bucket) -> None:
        _adam_call(bucket, _constants(bucket), grads=bucket.pp["grad"])
        sums = bucket.pp.pop("_v_sums", None)
        if sums is not None:
            for v, row in zip(bucket.states["exp_avg_sq"], sums, strict=True):
                bucket.carried.put(v, row)


def _constants(bucket: Bucket) -> list[float]:
    """Per model: the rule's decay constant (``_native.c``'s ``dec[k]``) from its strength per step."""
    spec, hp = bucket.spec, bucket.hp
    k = bucket.models()
    rule = spec.rule
    s, lam = _floats(hp["s"], k), _floats(hp["lam"], k)
    if "mean_vhat" in rule.needs:
        eps = spec.direction.rule_eps(spec)
        means = _floats(hp["mean_vhat"], k)
        strengths = [rule.strength(si, li, _Root(m), eps) for si, li, m in zip(s, lam, means, strict=True)]
    else:
        strengths = [rule.strength(si, li) for si, li in zip(s, lam, strict=True)]
    return [rule.native_constant(float(x)) for x in strengths]


class _Root(float):
    """A float with ``.sqrt()``: lets a rule's tensor formula for ``mean v̂`` run on a Python float."""

    def sqrt(self):
        return math.sqrt(self)


def _check_sizes(params: list[Tensor], tensors: dict[str, list[Tensor | None]]) -> None:
    """Every tensor handed to the C step holds exactly its parameter's number of elements."""
    for key, items in tensors.items():
        for i, (p, t) in enumerate(zip(params, items, strict=True)):
            if t is not None and t.numel() != p.numel():
                raise ValueError(
                    f"optimizer state: {key} of parameter {i} has shape {tuple(t.shape)} but the parameter has shape "
                    f"{tuple(p.shape)}; the native step refuses to run on it (a state dict of another model?)"
                )


def _models_of(spec: BucketSpec, params) -> int:
    return params[0].shape[0] if spec.stacked else 1


def _adam_rows(bucket: Bucket):
    """The coefficient table (``_native.c``'s C_* columns), one row per distinct step count of the
    bucket, and each tensor's row. (Adam's betas are one per group, never per model.)"""
    spec, hp, pp = bucket.spec, bucket.hp, bucket.pp
    beta1, beta2 = float(hp["beta1"]), float(hp["beta2"])
    tail = (1 - beta1, beta2, 1 - beta2, spec.eps, -1.0 if spec.maximize else 1.0)
    firsts: dict[int, int] = {}
    values = array.array("d")
    rows = []
    for c1, c2 in zip(pp["inv_bias_correction1"], pp["inv_bias_correction2_sqrt"], strict=True):
        key = id(c1)  # the optimizer shares one tensor per distinct step count
        first = firsts.get(key)
        if first is None:
            first = firsts[key] = len(values) // build.NCOEF
            values.extend((float(c1), float(c2), *tail))
        rows.append(first)
    return (ctypes.c_double * len(values)).from_buffer(values), rows


def _layout(bucket: Bucket):
    """The coefficient table and the bucket's sizes for ``_native.c``: ``coef, (per_model, models, rows)``.

    Made once per bucket and step (kept in ``pp``: the stable form's pre-pass and update share it).
    """
    layout = bucket.pp.get("_native_layout")
    if layout is None:
        coef, rows = _adam_rows(bucket)
        layout = bucket.pp["_native_layout"] = (coef, _sizes(bucket.spec, bucket.params, rows))
    return layout


def _sizes(spec: BucketSpec, params, rows):
    n, k = len(params), _models_of(spec, params)
    per_model = (ctypes.c_int64 * n)(*(p.numel() // k for p in params))
    models = (ctypes.c_int64 * n)(*([k] * n))
    return per_model, models, (ctypes.c_int64 * n)(*rows)


def _per_model(spec: BucketSpec, hp, k: int, decay: list[float]):
    """Per model: ``lr_t`` and the rule's decay constant (``_native.c``: ``lr``, ``dec``)."""
    lr_a, dec_a = array.array("d", _floats(hp["lr"], k)), array.array("d", decay)
    return (ctypes.c_double * k).from_buffer(lr_a), (ctypes.c_double * k).from_buffer(dec_a)


def _fn(kind: str, dtype: torch.dtype):
    return getattr(build.library(), f"decaylab_{kind}_{'double' if dtype == torch.float64 else 'float'}")


def _adam_call(bucket: Bucket, decay: list[float], grads=None) -> None:
    spec, params = bucket.spec, bucket.params
    n, k = len(params), bucket.models()
    if grads is None:
        grads = [g if g.is_contiguous() else g.contiguous() for g in bucket.grads]  # held until the call returns
    m, v = bucket.states["exp_avg"], bucket.states["exp_avg_sq"]
    vmax = bucket.states.get("max_exp_avg_sq") or [None] * n
    _check_sizes(params, {"grad": grads, "exp_avg": m, "exp_avg_sq": v, "max_exp_avg_sq": vmax})
    ptrs = (ctypes.c_void_p * (5 * n))()
    ptrs[0::5] = [t.data_ptr() for t in params]
    ptrs[1::5] = [t.data_ptr() for t in grads]
    ptrs[2::5] = [t.data_ptr() for t in m]
    ptrs[3::5] = [t.data_ptr() for t in v]
    ptrs[4::5] = [None if t is None else t.data_ptr() for t in vmax]
    coef, sizes = _layout(bucket)
    status = _fn("adam", params[0].dtype)(
        n, ptrs, *sizes, coef, *_per_model(spec, bucket.hp, k, decay),
        spec.rule.native, int(spec.amsgrad), torch.get_num_threads())
    if status != 0:
        raise MemoryError("decaylab's native Adam step could not allocate its work list")
    # written through raw pointers: tell autograd, as an in-place op would
    _bump_versions([*params, *m, *v, *(t for t in vmax if t is not None)])


def _bump_versions(tensors: list[Tensor]) -> None:
    try:
        torch.autograd.graph.increment_version(tensors)  # a list: torch ≥ 2.5
    except TypeError:
        for t in tensors:
            torch.autograd.graph.increment_version(t)


def _sgd_call(bucket: Bucket) -> None:
    spec, params, pp, hp = bucket.spec, bucket.params, bucket.pp, bucket.hp
    n, k = len(params), bucket.models()
    grads = [g if g.is_contiguous() else g.contiguous() for g in bucket.grads]  # held until the call returns
    bufs = bucket.states.get("momentum_buffer") or [None] * n
    _check_sizes(params, {"grad": grads, "momentum_buffer": bufs})
    ptrs = (ctypes.c_void_p * (3 * n))()
    ptrs[0::3] = [t.data_ptr() for t in params]
    ptrs[1::3] = [t.data_ptr() for t in grads]
    ptrs[2::3] = [None if t is None else t.data_ptr() for t in bufs]
    # one coefficient row per distinct (keep, gain): a buffer's first step or a later one
    sign = -1.0 if spec.maximize else 1.0
    values, rows, firsts = array.array("d"), [], {}
    pairs = zip(pp["keep"], pp["gain"], strict=True) if spec.momentum else [(None, None)] * n
    for keep, gain in pairs:
        key = (id(keep), id(gain))
        if key not in firsts:
            firsts[key] = len(values) // build.NSGD
            values.extend((0.0, 1.0, 0.0, sign) if keep is None else (float(keep), float(gain), spec.momentum, sign))
        rows.append(firsts[key])
    coef = (ctypes.c_double * len(values)).from_buffer(values)
    decay = _constants(bucket)
    # prox_euclid is prox for SGD (D = 1): the C loop divides by its constant 1 + s_t·λ
    if spec.rule.name == "prox_euclid":
        decay = [1 + d for d in decay]
    variant = 0 if spec.momentum == 0 else (2 if spec.nesterov else 1)
    status = _fn("sgd", params[0].dtype)(
        n, ptrs, *_sizes(spec, params, rows), coef, *_per_model(spec, hp, k, decay),
        spec.rule.native, variant, torch.get_num_threads())
    if status != 0:
        raise MemoryError("decaylab's native SGD step could not allocate its work list")
    _bump_versions([*params, *(t for t in bufs if t is not None)])
