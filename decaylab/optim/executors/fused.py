"""The fused executor: torch's own fused Adam kernels, with the decay rule folded into their constants.

``torch._fused_adam_`` / ``torch._fused_adamw_`` (one C++ or CUDA call per bucket) compute
``w·(1 − lr'·wd') − lr'·u_t`` (``adamw``) or Adam with ``wd'·w`` added to the gradient (``adam``).
A rule that is exactly such a step with other constants says how in its ``fused`` lowering
(:meth:`decaylab.optim.rules.DecayRule.fused`): ``l2`` (``adam``, ``wd' = λ``), ``decoupled`` (any
scale: ``wd' = (s_t/lr_t)·λ``, which is λ itself for ``decay_scale="lr"``, so AdamW is torch's
fused AdamW bit for bit), ``prox`` (``lr' = lr_t/(1+s_t·λ)``, ``wd' = s_t·λ/lr_t``) and ``stable``
(``wd' = strength/lr_t`` with ``mean v̂_t`` from ``β₂·Σv_{t−1} + (1−β₂)·Σg²`` before the step: ``Σv``
carried from the previous step, so one extra read of ``g``). The kernels take their constants as
Python floats: this executor passes the group's own numbers, never copies rounded to the tensors'
dtype. CPU and CUDA tensors of float32/float64, decay toward zero; K stacked models run one call
each on their dim-0 slices, except ``stable``.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from .. import directions
from .base import Bucket, BucketSpec, Executor
from .reference import reference_step


def _float(x) -> float:
    return float(x) if not isinstance(x, Tensor) else float(x.item())


class Fused(Executor):
    name = "fused"

    def why_not_spec(self, spec: BucketSpec) -> str | None:
        if spec.direction.name != "adam":
            return f"the direction is {spec.direction.name}, not Adam (torch's fused kernels are Adam's)"
        if spec.rule.fused(1.0, 1.0, 0.0, 0.0) is None:
            return f"decay={spec.rule.name!r} has no fused lowering (it is not an Adam(W) step with other constants)"
        if spec.to_init:
            return "decay_to='init'"
        if spec.global_statistic and spec.stacked:
            return f"decay={spec.rule.name!r} with per-model (K,) lr or weight_decay"
        if spec.global_statistic and spec.amsgrad:
            return f"decay={spec.rule.name!r} with amsgrad (its mean v̂ needs the new max_exp_avg_sq)"
        if spec.low_precision != "none":
            return f"16-bit parameters with low_precision={spec.low_precision!r}"
        return None

    def why_not_param(self, p: Tensor) -> str | None:
        if p.device.type not in ("cpu", "cuda"):
            return f"the parameters are on {p.device.type} (torch's fused Adam runs on the CPU and CUDA)"
        if p.dtype not in (torch.float32, torch.float64):
            return f"a parameter's dtype is {p.dtype}, not float32 or float64"
        return None

    def why_not(self, bucket: Bucket) -> str | None:
        why = self.why_not_spec(bucket.spec)
        if why:
            return why
        p0 = bucket.params[0]
        if p0.device.type not in ("cpu", "cuda"):
            return f"the parameters are on {p0.device.type} (torch's fused Adam runs on the CPU and CUDA)"
        # torch's kernels walk every tensor of a parameter as one flat array: parameters and their state
        # must be contiguous (a non-contiguous gradient is copied).
        for p, g in zip(bucket.params, bucket.grads, strict=False):
            if p.dtype not in (torch.float32, torch.float64):
                return f"a parameter's dtype is {p.dtype}, not float32 or float64"
            if type(p.data) is not Tensor:
                return "the parameters are sharded (DTensor)"
            if not p.is_contiguous():
                return "a parameter is not contiguous"
            if g.dtype != p.dtype or g.device != p.device:
                return "a gradient's dtype or device differs from its parameter's"
        return None

    def step(self, bucket: Bucket) -> None:
        spec, raw = bucket.spec, bucket.raw
        _call(spec, bucket, [spec.rule.strength(s, lam) for s, lam in _per_model(bucket, raw["s"], raw["lam"])])

    def moments(self, bucket: Bucket):
        """The sum of ``v̂_t`` over the bucket, before the step writes anything.

        Per tensor ``Σv_t = β₂·Σv_{t−1} + (1 − β₂)·Σg_t²``, times ``1/(1 − β₂^t)``. ``Σv_{t−1}`` is
        carried from this path's previous step (float64, :class:`~.base.CarriedSums`), so a step reads
        ``g`` once more and ``v`` not at all; the new sums are recorded after the update.
        """
        beta2 = float(bucket.raw["beta2"])
        g2 = torch.cat([_sum_of_squares(g) for g in bucket.grads]).tolist()
        new = []
        for v, gg in zip(bucket.states["exp_avg_sq"], g2, strict=False):
            before = bucket.carried.get(v)
            before = v.sum(dtype=torch.float64).item() if before is None else before[0]
            new.append(beta2 * before + (1 - beta2) * gg)
        bucket.pp["_v_sums"] = new
        c2 = [float(c) for c in bucket.pp["inv_bias_correction2_sqrt"]]
        return torch.tensor(sum(x * c * c for x, c in zip(new, c2, strict=False)), dtype=torch.float64)

    def update(self, bucket: Bucket) -> None:
        spec, raw = bucket.spec, bucket.raw
        mean_vhat = float(bucket.hp["mean_vhat"])
        eps = spec.direction.rule_eps(spec)
        strengths = [spec.rule.strength(s, lam, torch.tensor(mean_vhat, dtype=torch.float64), eps).item()
                     for s, lam in _per_model(bucket, raw["s"], raw["lam"])]
        _call(spec, bucket, strengths, mean_vhat)
        for v, total in zip(bucket.states["exp_avg_sq"], bucket.pp.pop("_v_sums"), strict=False):
            bucket.carried.put(v, [total])


def _per_model(bucket: Bucket, *values):
    """Each value as K Python floats (K = 1 for one model): the group's own numbers, unrounded."""
    k = bucket.models()
    lists = []
    for x in values:
        if isinstance(x, Tensor):
            items = x.reshape(-1).tolist()
            lists.append(items if len(items) == k else items * k)
        else:
            lists.append([float(x)] * k)
    return list(zip(*lists, strict=True))


def _sum_of_squares(g: Tensor) -> Tensor:
    flat = g.reshape(-1)
    return torch.mv(flat.view(1, -1), flat)  # BLAS: one read of g at memory speed (sum and norm are slower)


def _call(spec: BucketSpec, bucket: Bucket, strengths: list[float], mean_vhat: float | None = None) -> None:
    """Fused calls with each model's strength per step (:meth:`DecayRule.strength`). Stacked models run
    one call each on their slices (dim 0) of every tensor."""
    states, raw = bucket.states, bucket.raw
    m, v, vmax = states["exp_avg"], states["exp_avg_sq"], states.get("max_exp_avg_sq", [])
    grads = [g if g.is_contiguous() else g.contiguous() for g in bucket.grads]
    params = bucket.params
    steps = bucket.pp["step"]
    if params[0].device.type != "cpu":  # torch's device kernels read the counts on the device
        steps = [s.to(params[0].device, non_blocking=True) for s in steps]
    kw = dict(beta1=float(raw["beta1"]), beta2=float(raw["beta2"]), eps=spec.eps, amsgrad=spec.amsgrad,
              maximize=spec.maximize, grad_scale=None, found_inf=None)
    models = _per_model(bucket, raw["lr"], raw["s"], raw["lam"])
    if not spec.stacked:
        (lr, s, lam), = models
        _one(spec, params, grads, m, v, vmax, steps, lr, s, lam, strengths[0], kw, mean_vhat)
        return
    # each model's slices of every tensor, with one unbind per tensor
    k_models = len(models)
    per_model = [list(zip(*(t.unbind(0) for t in tensors), strict=True)) if tensors else [[]] * k_models
                 for tensors in (params, grads, m, v, vmax)]
    for k, ((lr, s, lam), strength) in enumerate(zip(models, strengths, strict=True)):
        p_k, g_k, m_k, v_k, vmax_k = (list(slices[k]) for slices in per_model)
        _one(spec, p_k, g_k, m_k, v_k, vmax_k, steps, lr, s, lam, strength, kw, mean_vhat)


def _one(spec: BucketSpec, params, grads, m, v, vmax, steps, lr: float, s: float, lam: float, strength: float,
         kw, mean_vhat: float | None) -> None:
    """One model's fused call (``params`` etc. are lists of its tensors)."""
    folded = lr or spec.rule.acts == "gradient"
    kernel, lr_k, wd = spec.rule.fused(lr, s, lam, strength) if folded else ("adam", lr, 0.0)
    # No lr to fold the decay into, or a shrink all the way to w_ref (stable's cap), which the kernel's
    # w − (w·lr')·wd' can round past zero: run the rule as written, for this model.
    if (strength != 0 and not folded) or (kernel == "adamw" and lr_k * wd >= 1):
        dtype = params[0].dtype
        hp = {k: torch.tensor(x, dtype=dtype, device=params[0].device) for k, x in
              dict(lr=lr, lam=lam, s=s, beta1=kw["beta1"], beta2=kw["beta2"]).items()}
        if mean_vhat is not None:
            hp["mean_vhat"] = torch.tensor(mean_vhat, dtype=dtype, device=params[0].device)
        states = {"exp_avg": m, "exp_avg_sq": v} | ({"max_exp_avg_sq": vmax} if spec.amsgrad else {})
        corrections = [directions.adam_bias_corrections(kw["beta1"], kw["beta2"], float(t)) for t in steps]
        pp = {"inv_bias_correction1": [torch.tensor(c[0], dtype=dtype) for c in corrections],
              "inv_bias_correction2_sqrt": [torch.tensor(c[1], dtype=dtype) for c in corrections]}
        reference_step(dataclasses.replace(spec, stacked=False), params, grads, states, hp, pp)
        return
    fn = torch._fused_adam_ if kernel == "adam" else torch._fused_adamw_
    if not math.isfinite(wd):
        raise ValueError(f"decay={spec.rule.name!r}: the fused constants are not finite (lr={lr}, strength={strength})")
    fn(params, grads, m, v, vmax, steps, lr=lr_k, weight_decay=wd, **kw)
