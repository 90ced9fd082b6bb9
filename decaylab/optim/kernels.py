"""How a step runs: one specification, three executors.

:func:`tensor_moments` and :func:`tensor_update` are the specification of a step for one
tensor: the direction's state update, then decay and step, composed from
:mod:`~decaylab.optim.directions` and :mod:`~decaylab.optim.rules`. They are written with
arithmetic only, so the same code runs

* **reference** — once per tensor, in a Python loop (readable; the spec);
* **foreach** — once per bucket on :class:`TensorList` objects (multi-tensor kernels);
* **compiled** — the reference loop over a chunk of tensors, compiled by ``torch.compile`` with
  dynamic shapes: every hyperparameter enters as a tensor, so a moving lr schedule or a
  per-model (stacked) lr does not recompile, and one graph serves every chunk of a bucket;
* **fused** — torch's own fused Adam kernels (``torch._fused_adam_`` / ``_fused_adamw_``, one C++
  call per bucket) for the rules that are exactly an AdamW step with other constants: ``l2``,
  ``decoupled`` (any scale: ``wd' = s_t·λ/lr_t``), ``prox`` (``lr' = lr_t/(1+s_t·λ)``,
  ``wd' = s_t·λ/lr_t``, so ``w·(1 − lr'·wd') − lr'·u = (w − lr_t·u)/(1 + s_t·λ)``) and ``stable``
  (``wd' = s_t·λ/((sqrt(mean v̂)+ε)·lr_t)``, with ``mean v̂_t`` from ``β₂·Σv_{t−1} + (1−β₂)·Σg²``
  before the step: ``Σv`` carried from the previous step, so one extra read of ``g``). CPU tensors
  of fp32/fp64, decay toward zero; K stacked models run one call each on their dim-0 slices,
  except ``stable`` (see :func:`can_fuse`).

A *bucket* is the tensors of one param group that share device, dtype and layout. The
:class:`Spec` holds what is fixed for a bucket (names, flags, eps); the ``hp`` dict holds
what may move (``lr``, ``lam``, ``s``, Adam's ``beta1``/``beta2``) as tensors of the compute
dtype, 0-dim for one model or shape ``(K,)`` for ``K`` models stacked along dim 0.
"""
from __future__ import annotations

import array
import ctypes
import dataclasses
import functools
import math
import types
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from . import directions, native, precision, rules
from .tensorlist import TensorList

BACKENDS = ("auto", "reference", "foreach", "compiled", "fused", "native")
# Below this many elements in a bucket, `auto` prefers foreach: the step is dominated by
# per-kernel overhead there and a compile (seconds) would not pay for itself.
AUTO_COMPILE_MIN_NUMEL = 1 << 20
# Tensors per compiled call. One graph (dynamic shapes) serves every full chunk; compile time
# grows with the chunk, per-call overhead shrinks with it.
COMPILE_CHUNK = 8


@dataclass(frozen=True)
class Spec:
    """What is fixed for one bucket's step (hashable: it keys the compiled graphs)."""

    direction: str  # "adam" | "sgd"
    form: str
    to_init: bool = False
    amsgrad: bool = False
    maximize: bool = False
    eps: float = 1e-8
    momentum: float = 0.0  # SGD; 0 means no buffer
    nesterov: bool = False
    low_precision: str = "none"  # "none" | "kahan" | "stochastic", for 16-bit params
    stacked: bool = False

    @property
    def state_keys(self) -> tuple[str, ...]:
        keys: tuple[str, ...] = ()
        if self.direction == "adam":
            keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())
        elif self.momentum != 0:
            keys = ("momentum_buffer",)
        if self.to_init:
            keys += ("init_param",)
        if self.low_precision == "kahan":
            keys += ("kahan_comp",)
        return keys


# --------------------------------------------------------------------------- the specification


def _expand(h, x):
    """Broadcast a per-model hyperparameter of shape (K,) against ``x`` (stacked along dim 0)."""
    if not isinstance(h, Tensor) or h.dim() == 0:
        return h
    if isinstance(x, TensorList):
        return TensorList([h.view(-1, *([1] * (t.dim() - 1))) for t in x.items])
    return h.view(-1, *([1] * (x.dim() - 1)))


def _hp(hp: dict, x) -> dict:
    return {k: _expand(v, x) for k, v in hp.items()}


def _compute(x, spec: Spec):
    """Read a stored tensor in the compute dtype (fp32 for 16-bit storage)."""
    if x is None:
        return None
    dtype = x.items[0].dtype if isinstance(x, TensorList) else x.dtype
    return x.float() if dtype in precision.LOW_PRECISION else x


def _write(dst, src) -> None:
    if isinstance(dst, TensorList):
        src.copy_into(dst.items)
    else:
        dst.copy_(src)


def tensor_moments(spec: Spec, p, g, st: dict, hp: dict, pp: dict) -> dict:
    """Phase 1: the direction's state after gradient ``g``; writes and returns the new state.

    ``st`` maps state keys to stored tensors, ``pp`` holds per-tensor scalars (Adam's ``step``;
    SGD's first-step coefficients ``keep``/``gain``). Returns the new state in compute dtype,
    plus ``"g"``: the gradient after ``maximize`` and the ``l2`` form.
    """
    hp = _hp(hp, p)
    g = _compute(g, spec)
    if spec.maximize:
        g = -g
    if spec.form == "l2":
        g = rules.l2_gradient(g, precision.read_param(p, st, spec), _compute(st.get("init_param"), spec), hp["lam"])
    new = {"g": g}
    if spec.direction == "adam":
        beta1, beta2 = hp["beta1"], hp["beta2"]
        v_max = _compute(st["max_exp_avg_sq"], spec) if spec.amsgrad else None
        m, v, v_max = directions.adam_moments(
            g, _compute(st["exp_avg"], spec), _compute(st["exp_avg_sq"], spec), v_max, beta1, beta2
        )
        new.update(exp_avg=m, exp_avg_sq=v)
        if spec.amsgrad:
            new["max_exp_avg_sq"] = v_max
    elif spec.momentum != 0:
        buf = _compute(st["momentum_buffer"], spec)
        new["momentum_buffer"] = directions.sgd_momentum(g, buf, pp["keep"], pp["gain"])
    for key, value in new.items():
        if key != "g":
            _write(st[key], value)
    return new


def tensor_vhat_sum(spec: Spec, new: dict, pp: dict):
    """Sum of Adam's ``v̂`` over one tensor: one number per model (for the stable form)."""
    v_used = new["max_exp_avg_sq"] if spec.amsgrad else new["exp_avg_sq"]
    vhat = v_used * pp["inv_bias_correction2_sqrt"] ** 2
    return vhat.reshape(vhat.shape[0], -1).sum(1) if spec.stacked else vhat.sum()


def moments_from_state(spec: Spec, st: dict) -> dict:
    """The moments as :func:`tensor_moments` returned them, read back from the (updated) state."""
    keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if spec.amsgrad else ())
    return {k: _compute(st[k], spec) for k in keys}


def tensor_update(spec: Spec, p, st: dict, new: dict, hp: dict, pp: dict) -> None:
    """Phase 2: direction × decay rule; writes the parameter (and Kahan compensation).

    ``new`` is what :func:`tensor_moments` returned. ``hp["mean_vhat"]`` is needed by the
    stable form only.
    """
    hp = _hp(hp, p)
    w = precision.read_param(p, st, spec)
    w_ref = _compute(st.get("init_param"), spec)
    if spec.direction == "adam":
        v_used = new["max_exp_avg_sq"] if spec.amsgrad else new["exp_avg_sq"]
        if spec.form == "prox_euclid":
            # rules.prox_euclid after the Adam step, (w − lr·m̂/D)/(1 + s·λ/D), with D multiplied
            # through: (w·D − lr·m̂)/(D + s·λ), one division per element instead of three.
            D = v_used.sqrt() * pp["inv_bias_correction2_sqrt"] + spec.eps
            step = new["exp_avg"] * (pp["inv_bias_correction1"] * hp["lr"])
            d = rules.offset(w, w_ref)
            d = (d * D - step) / (D + hp["s"] * hp["lam"])
            precision.write_param(p, st, d if w_ref is None else w_ref + d, spec)
            return
        u, D = directions.adam_direction_corrected(
            new["exp_avg"], v_used, spec.eps, pp["inv_bias_correction1"], pp["inv_bias_correction2_sqrt"]
        )
    else:
        u = directions.sgd_direction(new["g"], new.get("momentum_buffer"), spec.momentum, spec.nesterov)
        D = 1.0
    s, lam = hp["s"], hp["lam"]
    if spec.form == "decoupled":
        w = rules.decoupled(w, w_ref, s, lam)
    elif spec.form == "cautious":
        w = rules.cautious(w, w_ref, u, s, lam)
    elif spec.form == "stable":
        w = rules.stable(w, w_ref, s, lam, hp["mean_vhat"], spec.eps if spec.direction == "adam" else 0.0)
    w = w - u * hp["lr"]
    if spec.form == "prox":
        w = rules.prox(w, w_ref, s, lam)
    elif spec.form == "prox_euclid":
        w = rules.prox_euclid(w, w_ref, s, lam, D)
    precision.write_param(p, st, w, spec)


# --------------------------------------------------------------------------- executors


def _select(items: list[dict], i: int) -> dict:
    return {k: v[i] for k, v in items.items()}


def reference_moments(spec: Spec, params, grads, states, hp, pp):
    """Phase 1 tensor by tensor (writes the state); returns the v̂ sum the stable form needs."""
    total = 0
    for i, (p, g) in enumerate(zip(params, grads, strict=False)):
        new = tensor_moments(spec, p, g, _select(states, i), hp, _select(pp, i))
        if spec.form == "stable" and spec.direction == "adam":
            total = total + tensor_vhat_sum(spec, new, _select(pp, i))
    return total


def reference_update(spec: Spec, params, states, hp, pp) -> None:
    """Phase 2 tensor by tensor, reading the moments that phase 1 stored."""
    for i, p in enumerate(params):
        st = _select(states, i)
        tensor_update(spec, p, st, moments_from_state(spec, st), hp, _select(pp, i))


def reference_step(spec: Spec, params, grads, states, hp, pp) -> None:
    """Both phases, tensor by tensor (forms without a global statistic)."""
    for i, (p, g) in enumerate(zip(params, grads, strict=False)):
        st, pi = _select(states, i), _select(pp, i)
        tensor_update(spec, p, st, tensor_moments(spec, p, g, st, hp, pi), hp, pi)


def _lists(params, states, pp):
    return TensorList(params), {k: TensorList(v) for k, v in states.items()}, {k: TensorList(v) for k, v in pp.items()}


def foreach_moments(spec: Spec, params, grads, states, hp, pp):
    P, S, PP = _lists(params, states, pp)
    new = tensor_moments(spec, P, TensorList(grads), S, hp, PP)
    total = 0
    if spec.form == "stable" and spec.direction == "adam":
        v_used = new["max_exp_avg_sq"] if spec.amsgrad else new["exp_avg_sq"]
        for t in (v_used * (PP["inv_bias_correction2_sqrt"] * PP["inv_bias_correction2_sqrt"])).items:
            total = total + (t.reshape(t.shape[0], -1).sum(1) if spec.stacked else t.sum())
    return total


def foreach_update(spec: Spec, params, states, hp, pp) -> None:
    P, S, PP = _lists(params, states, pp)
    tensor_update(spec, P, S, moments_from_state(spec, S), hp, PP)


def foreach_step(spec: Spec, params, grads, states, hp, pp) -> None:
    P, S, PP = _lists(params, states, pp)
    tensor_update(spec, P, S, tensor_moments(spec, P, TensorList(grads), S, hp, PP), hp, PP)


# Compiled path: the reference loop, flattened to 1-D (or (K, -1) when stacked) so that one
# dynamic-shape graph serves tensors of every shape.


def _entry_step(params, grads, states, hp, pp, spec=None):
    reference_step(spec, params, grads, states, hp, pp)


def _entry_moments(params, grads, states, hp, pp, spec=None):
    return reference_moments(spec, params, grads, states, hp, pp)


def _entry_update(params, states, hp, pp, spec=None):
    reference_update(spec, params, states, hp, pp)


@functools.cache
def _compiled(kind: str, spec: Spec):
    """A compiled entry point for ``(kind, spec)``.

    Dynamo keeps its cache, and its recompile limit, per code object. Each spec gets a copy of
    the entry's code object with the spec bound as a default argument, so many specs in one
    process (forms, flags, dtypes) never push each other out of the cache.
    """
    base = {"step": _entry_step, "moments": _entry_moments, "update": _entry_update}[kind]
    code = base.__code__.replace(co_name=f"{base.__name__}_{len(_COMPILED_NAMES)}")
    _COMPILED_NAMES.append(code.co_name)
    fn = types.FunctionType(code, base.__globals__, code.co_name, (spec,))
    # Kahan compensation is `w − round(w)`: inductor must not fold the round trip to bf16 away.
    return torch.compile(fn, fullgraph=True, dynamic=True, options={"emulate_precision_casts": True})


_COMPILED_NAMES: list[str] = []


def _flat(spec: Spec, tensors):
    k = -1
    return [t.view(t.shape[0], k) if spec.stacked else t.view(k) for t in tensors]


def can_compile(params, grads, states) -> bool:
    """Compiled chunks work on flat views: every written tensor must be contiguous."""
    return all(p.is_contiguous() for p in params) and all(t.is_contiguous() for v in states.values() for t in v)


def _chunks(n: int):
    return [slice(i, min(i + COMPILE_CHUNK, n)) for i in range(0, n, COMPILE_CHUNK)]


def compiled_step(spec: Spec, params, grads, states, hp, pp) -> None:
    fn = _compiled("step", spec)
    P = _flat(spec, params)
    G = [g.reshape(p.shape) for g, p in zip(grads, P, strict=False)]
    S = {k: _flat(spec, v) for k, v in states.items()}
    for c in _chunks(len(P)):
        fn(P[c], G[c], {k: v[c] for k, v in S.items()}, hp, {k: v[c] for k, v in pp.items()})


def compiled_moments(spec: Spec, params, grads, states, hp, pp):
    fn = _compiled("moments", spec)
    P = _flat(spec, params)
    G = [g.reshape(p.shape) for g, p in zip(grads, P, strict=False)]
    S = {k: _flat(spec, v) for k, v in states.items()}
    total = 0
    for c in _chunks(len(P)):
        total = total + fn(P[c], G[c], {k: v[c] for k, v in S.items()}, hp, {k: v[c] for k, v in pp.items()})
    return total


def compiled_update(spec: Spec, params, states, hp, pp) -> None:
    fn = _compiled("update", spec)
    P = _flat(spec, params)
    S = {k: _flat(spec, v) for k, v in states.items()}
    for c in _chunks(len(P)):
        fn(P[c], {k: v[c] for k, v in S.items()}, hp, {k: v[c] for k, v in pp.items()})


# Fused path: torch's fused Adam kernels with the decay rule folded into their constants.

FUSED_FORMS = ("l2", "decoupled", "prox", "stable")


def fusable_spec(spec: Spec) -> str | None:
    """Why ``spec`` cannot run on torch's fused Adam kernels, or None when it can."""
    if spec.direction != "adam":
        return "the direction is not Adam"
    if spec.form not in FUSED_FORMS:
        return f"decay={spec.form!r} is not one of {FUSED_FORMS}"
    if spec.to_init:
        return "decay_to='init'"
    if spec.form == "stable" and spec.stacked:
        return "decay='stable' with per-model (K,) lr or weight_decay"
    if spec.form == "stable" and spec.amsgrad:
        return "decay='stable' with amsgrad (its mean v̂ needs the new max_exp_avg_sq)"
    if spec.low_precision != "none":
        return f"16-bit parameters with low_precision={spec.low_precision!r}"
    return None


def fusable_tensor(p: Tensor) -> str | None:
    """Why parameter ``p`` cannot run on the fused path, or None."""
    if p.device.type != "cpu":
        return f"the parameter is on {p.device.type} (the fused path runs on CPU tensors)"
    if p.dtype not in (torch.float32, torch.float64):
        return f"the parameter's dtype is {p.dtype} (the fused path takes float32 and float64)"
    return None


def can_fuse(spec: Spec, params, grads) -> bool:
    """Can this bucket run on the fused path? (Plain tensors only: a sharded DTensor takes the others.)"""
    # torch's kernels walk every tensor of a parameter as one flat array: parameters and their state
    # must be contiguous (a non-contiguous gradient is copied, see _fused_call).
    return (fusable_spec(spec) is None
            and all(fusable_tensor(p) is None and type(p.data) is Tensor and p.is_contiguous() for p in params)
            and all(g.dtype == p.dtype and g.device == p.device for g, p in zip(grads, params, strict=False)))


def _fused_call(spec: Spec, params, grads, states, hp, pp, decay) -> None:
    """Fused AdamW calls whose step is ``w·(1 − s_t·λ') − lr_t·u_t`` (decoupled / stable) or the
    proximal ``(w − lr_t·u_t)/(1 + s_t·λ')``, with ``decay = s_t·λ'`` (a float, or a list of one per
    stacked model). Stacked models run one call each on their slices (dim 0) of every tensor."""
    m, v, vmax = states["exp_avg"], states["exp_avg_sq"], states.get("max_exp_avg_sq", [])
    grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
    kw = dict(beta1=float(hp["beta1"]), beta2=float(hp["beta2"]), eps=spec.eps, amsgrad=spec.amsgrad,
              maximize=spec.maximize, grad_scale=None, found_inf=None)
    if not spec.stacked:
        _fused_one(spec, params, grads, m, v, vmax, pp["step"], float(hp["lr"]), float(hp["lam"]), decay, kw)
        return
    k_models = params[0].shape[0]
    lrs = hp["lr"].expand(k_models).tolist()
    lams = hp["lam"].expand(k_models).tolist()
    decay = decay if isinstance(decay, list) else [decay] * k_models
    # each model's slices of every tensor, with one unbind per tensor
    per_model = [list(zip(*(t.unbind(0) for t in tensors), strict=True)) if tensors else [[]] * k_models
                 for tensors in (params, grads, m, v, vmax)]
    for k, (lr, lam, d) in enumerate(zip(lrs, lams, decay, strict=True)):
        p_k, g_k, m_k, v_k, vmax_k = (list(slices[k]) for slices in per_model)
        _fused_one(spec, p_k, g_k, m_k, v_k, vmax_k, pp["step"], lr, lam, d, kw)


def _fused_one(spec: Spec, params, grads, m, v, vmax, steps, lr: float, lam: float, decay: float, kw) -> None:
    """One model's fused call (``params`` etc. are lists of its tensors)."""
    if spec.form == "l2":
        torch._fused_adam_(params, grads, m, v, vmax, steps, lr=lr, weight_decay=lam, **kw)
        return
    if decay != 0 and lr == 0:  # no lr to fold the decay into: run the rule as written, for this model
        dtype = params[0].dtype
        hp = {k: torch.tensor(x, dtype=dtype) for k, x in
              dict(lr=lr, lam=lam, s=decay / lam if lam else 0.0, beta1=kw["beta1"], beta2=kw["beta2"]).items()}
        states = {"exp_avg": m, "exp_avg_sq": v} | ({"max_exp_avg_sq": vmax} if spec.amsgrad else {})
        corrections = [directions.adam_bias_corrections(kw["beta1"], kw["beta2"], float(t)) for t in steps]
        pp = {"inv_bias_correction1": [torch.tensor(c[0], dtype=dtype) for c in corrections],
              "inv_bias_correction2_sqrt": [torch.tensor(c[1], dtype=dtype) for c in corrections]}
        reference_step(dataclasses.replace(spec, stacked=False), params, grads, states, hp, pp)
        return
    if spec.form == "prox":
        lr, wd = lr / (1 + decay), (decay / lr if lr else 0.0)
    else:
        wd = decay / lr if lr else 0.0
    torch._fused_adamw_(params, grads, m, v, vmax, steps, lr=lr, weight_decay=wd, **kw)


def _fused_decay(hp):
    """``s_t·λ``: a float, or a list of one per stacked model."""
    if hp["s"].dim() or hp["lam"].dim():
        return (hp["s"] * hp["lam"]).reshape(-1).tolist()
    return float(hp["s"]) * float(hp["lam"])


def fused_step(spec: Spec, params, grads, states, hp, pp) -> None:
    _fused_call(spec, params, grads, states, hp, pp, _fused_decay(hp))


# Σv of each second-moment tensor after the last fused or native stable step: id(v) -> (a weak
# reference to v, v._version after that step, the sums: one per stacked model). Any other write
# to v (another backend, load_state_dict, a user) changes the version or the tensor, and the sum
# is then read afresh. (Keyed by id: a WeakKeyDictionary compares tensors with ==, elementwise.)
_V_SUMS: dict[int, tuple[weakref.ref, int, list[float]]] = {}


def _carried_sum(v: Tensor) -> list[float] | None:
    entry = _V_SUMS.get(id(v))
    if entry is not None and entry[0]() is v and entry[1] == v._version:
        return entry[2]
    return None


def _carry_sum(v: Tensor, total: list[float]) -> None:
    if len(_V_SUMS) > 4096:  # drop the entries of tensors that are gone
        for key in [k for k, e in _V_SUMS.items() if e[0]() is None]:
            del _V_SUMS[key]
    entry = _V_SUMS.get(id(v))
    ref = entry[0] if entry is not None and entry[0]() is v else weakref.ref(v)
    _V_SUMS[id(v)] = (ref, v._version, total)


def _sum_of_squares(g: Tensor) -> Tensor:
    flat = g.reshape(-1)
    return torch.mv(flat.view(1, -1), flat)  # BLAS: one read of g at memory speed (sum and norm are slower)


def fused_moments(spec: Spec, params, grads, states, hp, pp):
    """The stable form's sum of ``v̂_t`` over the bucket, before the step writes anything.

    Per tensor ``Σv_t = β₂·Σv_{t−1} + (1 − β₂)·Σg_t²``, times ``1/(1 − β₂^t)``. ``Σv_{t−1}`` is
    carried from this path's previous step (float64), so a step reads ``g`` once more and ``v``
    not at all; the new sums are recorded after the update (:func:`fused_update`).
    """
    beta2 = float(hp["beta2"])
    g2 = torch.cat([_sum_of_squares(g) for g in grads]).tolist()
    new = []
    for v, gg in zip(states["exp_avg_sq"], g2, strict=False):
        before = _carried_sum(v)
        before = v.sum(dtype=torch.float64).item() if before is None else before[0]
        new.append(beta2 * before + (1 - beta2) * gg)
    pp["_v_sums"] = new
    c2 = [float(c) for c in pp["inv_bias_correction2_sqrt"]]
    return torch.tensor(sum(x * c * c for x, c in zip(new, c2, strict=False)), dtype=torch.float64)


def fused_update(spec: Spec, params, states, hp, pp) -> None:
    mean_vhat = float(hp["mean_vhat"])
    decay = _fused_decay(hp) / (math.sqrt(mean_vhat) + spec.eps)
    _fused_call(spec, params, pp["grad"], states, hp, pp, decay)
    for v, total in zip(states["exp_avg_sq"], pp.pop("_v_sums"), strict=False):
        _carry_sum(v, [total])




# Native path: decaylab's own C loop (_native.c, built at first use; decaylab.optim.native), every
# Adam form in one pass, K stacked models in one call.


def nativable_spec(spec: Spec) -> str | None:
    """Why ``spec`` cannot run on the native step, or None when it can."""
    if spec.direction not in ("adam", "sgd"):
        return f"the direction {spec.direction!r} has no native step"
    if spec.to_init:
        return "decay_to='init'"
    if spec.low_precision != "none":
        return f"16-bit parameters with low_precision={spec.low_precision!r}"
    return None


def can_native(spec: Spec, params, grads, states) -> bool:
    """Can this bucket run on the native step? Plain contiguous CPU fp32/fp64 tensors, and a built library.

    (A bucket holds one device and dtype, and either only sharded DTensors or none: its first
    parameter answers for those.)
    """
    p0 = params[0]
    if (nativable_spec(spec) is not None or fusable_tensor(p0) is not None or type(p0.data) is not Tensor
            or not native.available()):
        return False
    dtype = p0.dtype
    return (all(p.is_contiguous() for p in params)
            and all(g.dtype == dtype and g.is_cpu for g in grads)
            and all(t.dtype == dtype and t.is_contiguous() for v in states.values() for t in v))


def _floats(x, k: int) -> list[float]:
    """A hyperparameter (0-dim or (K,) tensor, or number) as K Python floats."""
    if isinstance(x, Tensor):
        values = x.tolist()
        return values if isinstance(values, list) else [values] * k
    return [float(x)] * k


def _models(spec: Spec, params) -> int:
    return params[0].shape[0] if spec.stacked else 1


def _native_rows(spec: Spec, hp, pp):
    """The coefficient table (``_native.c``'s C_* columns), one row per distinct step count of the
    bucket, and each tensor's row. (Adam's betas are one per group, never per model.)"""
    beta1, beta2 = float(hp["beta1"]), float(hp["beta2"])
    tail = (1 - beta1, beta2, 1 - beta2, spec.eps, -1.0 if spec.maximize else 1.0)
    firsts: dict[int, int] = {}
    values = array.array("d")
    rows = []
    for c1, c2 in zip(pp["inv_bias_correction1"], pp["inv_bias_correction2_sqrt"], strict=True):
        key = id(c1)  # the optimizer shares one tensor per distinct step count
        first = firsts.get(key)
        if first is None:
            first = firsts[key] = len(values) // native.NCOEF
            values.extend((float(c1), float(c2), *tail))
        rows.append(first)
    return (ctypes.c_double * len(values)).from_buffer(values), rows


def _native_models(spec: Spec, hp, k: int, decay: list[float] | None = None):
    """Per model: ``lr_t`` and the form's decay constant (``_native.c``: ``lr``, ``dec``)."""
    lr = _floats(hp["lr"], k)
    if decay is None:
        lam = _floats(hp["lam"], k)
        if spec.form == "l2":
            decay = lam
        else:
            s = _floats(hp["s"], k)
            decay = [si * li for si, li in zip(s, lam, strict=True)]
            if spec.form == "prox":
                decay = [1 + d for d in decay]
    lr_a, dec_a = array.array("d", lr), array.array("d", decay)
    return (ctypes.c_double * k).from_buffer(lr_a), (ctypes.c_double * k).from_buffer(dec_a)


def _native_layout(spec: Spec, params, hp, pp):
    """The coefficient table and the bucket's sizes for ``_native.c``: ``coef, (per_model, models, rows)``.

    Made once per bucket and step (kept in ``pp``: the stable form's pre-pass and update share it).
    """
    layout = pp.get("_native_layout")
    if layout is None:
        coef, rows = _native_rows(spec, hp, pp)
        layout = pp["_native_layout"] = (coef, _native_sizes(spec, params, rows))
    return layout


def _native_sizes(spec: Spec, params, rows):
    n, k = len(params), _models(spec, params)
    per_model = (ctypes.c_int64 * n)(*(p.numel() // k for p in params))
    models = (ctypes.c_int64 * n)(*([k] * n))
    return per_model, models, (ctypes.c_int64 * n)(*rows)


def _native_fn(kind: str, dtype: torch.dtype):
    return getattr(native.library(), f"decaylab_{kind}_{'double' if dtype == torch.float64 else 'float'}")


def _native_call(spec: Spec, params, grads, states, hp, pp, decay=None) -> None:
    n, k = len(params), _models(spec, params)
    grads = [g if g.is_contiguous() else g.contiguous() for g in grads]  # held until the call returns
    m, v = states["exp_avg"], states["exp_avg_sq"]
    vmax = states.get("max_exp_avg_sq") or [None] * n
    ptrs = (ctypes.c_void_p * (5 * n))()
    ptrs[0::5] = [t.data_ptr() for t in params]
    ptrs[1::5] = [t.data_ptr() for t in grads]
    ptrs[2::5] = [t.data_ptr() for t in m]
    ptrs[3::5] = [t.data_ptr() for t in v]
    ptrs[4::5] = [None if t is None else t.data_ptr() for t in vmax]
    coef, sizes = _native_layout(spec, params, hp, pp)
    status = _native_fn("adam", params[0].dtype)(
        n, ptrs, *sizes, coef, *_native_models(spec, hp, k, decay),
        native.FORMS.index(spec.form), int(spec.amsgrad), torch.get_num_threads())
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


def _native_sgd_call(spec: Spec, params, grads, states, hp, pp) -> None:
    n, k = len(params), _models(spec, params)
    grads = [g if g.is_contiguous() else g.contiguous() for g in grads]  # held until the call returns
    bufs = states.get("momentum_buffer") or [None] * n
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
            firsts[key] = len(values) // native.NSGD
            values.extend((0.0, 1.0, 0.0, sign) if keep is None else (float(keep), float(gain), spec.momentum, sign))
        rows.append(firsts[key])
    coef = (ctypes.c_double * len(values)).from_buffer(values)
    decay = None
    if spec.form == "stable":  # SGDS: s_t·λ·(1 − δ)/(1 − μ), through the constant mean the optimizer passes
        root = math.sqrt(float(hp["mean_vhat"])) + 0.0
        decay = [si * li / root for si, li in zip(_floats(hp["s"], k), _floats(hp["lam"], k), strict=True)]
    elif spec.form == "prox_euclid":  # D = 1 for SGD: the Euclidean prox is prox
        decay = [1 + si * li for si, li in zip(_floats(hp["s"], k), _floats(hp["lam"], k), strict=True)]
    variant = 0 if spec.momentum == 0 else (2 if spec.nesterov else 1)
    status = _native_fn("sgd", params[0].dtype)(
        n, ptrs, *_native_sizes(spec, params, rows), coef, *_native_models(spec, hp, k, decay),
        native.FORMS.index(spec.form), variant, torch.get_num_threads())
    if status != 0:
        raise MemoryError("decaylab's native SGD step could not allocate its work list")
    _bump_versions([*params, *(t for t in bufs if t is not None)])


def native_step(spec: Spec, params, grads, states, hp, pp) -> None:
    if spec.direction == "sgd":
        _native_sgd_call(spec, params, grads, states, hp, pp)
    else:
        _native_call(spec, params, grads, states, hp, pp)


def native_moments(spec: Spec, params, grads, states, hp, pp):
    """The stable form's sum of ``v̂_t`` over the bucket (one per model when stacked), before any write.

    As on the fused path, ``Σv_{t−1}`` is carried per tensor (and model) from this path's previous
    step, so the pre-pass reads only ``g`` (``Σv_t = β₂·Σv_{t−1} + (1−β₂)·Σg_t²``); a tensor whose
    sum is not carried reads ``g`` and ``v``, and amsgrad reads ``g``, ``v`` and ``v_max``.
    """
    n, k = len(params), _models(spec, params)
    grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
    pp["grad"] = grads  # the update reads them again: copy a non-contiguous one once
    v, vmax = states["exp_avg_sq"], states.get("max_exp_avg_sq") or [None] * n
    carried = [None if spec.amsgrad else _carried_sum(t) for t in v]
    modes = [2 if spec.amsgrad else (0 if c is not None else 1) for c in carried]
    ptrs = (ctypes.c_void_p * (3 * n))()
    ptrs[0::3] = [t.data_ptr() for t in grads]
    ptrs[1::3] = [t.data_ptr() for t in v]
    ptrs[2::3] = [None if t is None else t.data_ptr() for t in vmax]
    coef, sizes = _native_layout(spec, params, hp, pp)
    sums = (ctypes.c_double * (n * k))()
    status = _native_fn("sums", params[0].dtype)(
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


def native_update(spec: Spec, params, states, hp, pp) -> None:
    k = _models(spec, params)
    s, lam = _floats(hp["s"], k), _floats(hp["lam"], k)
    roots = [math.sqrt(x) + spec.eps for x in _floats(hp["mean_vhat"], k)]
    decay = [si * li / r for si, li, r in zip(s, lam, roots, strict=True)]
    _native_call(spec, params, pp["grad"], states, hp, pp, decay)
    sums = pp.pop("_v_sums", None)
    if sums is not None:
        for v, row in zip(states["exp_avg_sq"], sums, strict=True):
            _carry_sum(v, row)


EXECUTORS = {
    "reference": (reference_step, reference_moments, reference_update),
    "foreach": (foreach_step, foreach_moments, foreach_update),
    "compiled": (compiled_step, compiled_moments, compiled_update),
    "fused": (fused_step, fused_moments, fused_update),
    "native": (native_step, native_moments, native_update),
}
