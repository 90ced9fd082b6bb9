r"""Adam (Kingma & Ba; torch's conventions), as a direction and as an optimizer.

::

    m_t = m_{t−1} + (1 − β₁)·(g_t − m_{t−1})  (torch: m.lerp_(g, 1 − β₁))
    v_t = β₂·v_{t−1} + (1 − β₂)·g_t²
    v_max = max(v_max, v_t)                  (amsgrad; v̂ uses v_max)
    D_t = sqrt(v_t) / sqrt(1 − β₂^t) + ε     (= ε + sqrt(v̂_t))
    u_t = m_t / (1 − β₁^t) / D_t

The functions are pure and work on a tensor or a :class:`~decaylab.optim.tensorlist.TensorList`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .. import rules, torch_compat
from ..optimizer import DecayOptimizer
from .base import Direction, _sqrt, check_betas, check_eps, register, step_dtype


def adam_moments(g, m, v, v_max, beta1, beta2):
    """New ``(m, v, v_max)``; ``v_max`` is ``None`` without amsgrad."""
    m = m + (g - m) * (1 - beta1)  # = torch's m.lerp_(g, 1 − β₁) for β₁ > 0.5, without lerp's blend
    v = v * beta2 + g * g * (1 - beta2)
    if v_max is not None:
        v_max = v_max.maximum(v)
    return m, v, v_max


def adam_bias_corrections(beta1, beta2, step):
    """``(1 / (1 − β₁^t), 1 / sqrt(1 − β₂^t))``; ``step`` counts this step (1 on the first).

    Reciprocals, so that the elementwise loop multiplies where it would divide.
    """
    return 1 / (1 - beta1**step), 1 / _sqrt(1 - beta2**step)


def adam_direction(m, v_used, beta1, beta2, eps, step):
    """``(u_t, D_t)`` from the updated moments; ``step`` counts this step (1 on the first)."""
    return adam_direction_corrected(m, v_used, eps, *adam_bias_corrections(beta1, beta2, step))


def adam_direction_corrected(m, v_used, eps, inv_bias_correction1, inv_bias_correction2_sqrt):
    """:func:`adam_direction` with the bias corrections given as :func:`adam_bias_corrections` makes them.

    The kernels compute them once per tensor and step, outside the elementwise loop (a ``β^t`` or
    a ``sqrt`` of a scalar inside a compiled loop is evaluated per element), and the loop has one
    division per element.
    """
    D = v_used.sqrt() * inv_bias_correction2_sqrt + eps
    return m * inv_bias_correction1 / D, D


def adam_vhat(v_used, beta2, step):
    """Bias-corrected second moment ``v̂_t`` (what the stable form averages)."""
    return v_used / (1 - beta2**step)



class AdamDirection(Direction):
    r"""Adam (Kingma & Ba; torch's conventions): ``u_t = m̂_t / (sqrt(v̂_t) + ε)``, ``D_t = sqrt(v̂_t) + ε``.

    Options: ``eps``, ``amsgrad`` (``v̂`` from ``max(v_max, v_t)``). Hyperparameters per step:
    ``betas``. State: ``step`` (a float tensor on the CPU, as torch keeps it), ``exp_avg``,
    ``exp_avg_sq`` (and ``max_exp_avg_sq`` with amsgrad).
    """

    name = "adam"
    provides = frozenset({"u", "D", "mean_vhat"})
    statistic = "sum"
    state = ("exp_avg", "exp_avg_sq")

    def validate(self, group):
        check_betas(group)
        check_eps(group)

    def options(self, group):
        return {"eps": float(group["eps"]), "amsgrad": bool(group["amsgrad"])}

    def state_keys(self, spec):
        return self.state + (("max_exp_avg_sq",) if spec.amsgrad else ())

    def init_state(self, p, state, spec):
        created = "exp_avg" not in state
        if created:
            state["step"] = torch.tensor(0.0, dtype=step_dtype())
            state["exp_avg"] = torch.zeros_like(p, dtype=spec.state_dtype, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=spec.state_dtype, memory_format=torch.preserve_format)
        if spec.amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(p, dtype=spec.state_dtype, memory_format=torch.preserve_format)
        return created

    def hparams(self, group):
        beta1, beta2 = group["betas"]
        return {"beta1": beta1, "beta2": beta2}

    def prepare(self, group, spec, params, states, fresh, tensor):
        steps = [st["step"] for st in states]
        torch._foreach_add_(steps, 1.0)
        beta1, beta2 = group["betas"]
        if torch.compiler.is_compiling() or not all(s.is_cpu for s in steps):
            # counts on the device (capturable-style), or a step being compiled: no host sync
            corrections = [adam_bias_corrections(beta1, beta2, tensor(s)) for s in steps]
        else:
            # torch keeps step counts on the CPU, and so does decaylab: the corrections are computed in
            # Python floats (float64, as torch.optim.Adam does), once per distinct count of the bucket
            # (nearly always one), and shared as 0-dim tensors.
            made: dict[float, tuple[Tensor, Tensor]] = {}
            corrections = []
            for s in steps:
                t = s.item()
                if t not in made:
                    c1, c2 = adam_bias_corrections(beta1, beta2, t)
                    made[t] = (tensor(c1), tensor(c2))
                corrections.append(made[t])
        return {"inv_bias_correction1": [c[0] for c in corrections],
                "inv_bias_correction2_sqrt": [c[1] for c in corrections]}

    def moments(self, spec, g, st, hp, pp):
        m, v, v_max = adam_moments(g, st["exp_avg"], st["exp_avg_sq"], st.get("max_exp_avg_sq"), hp["beta1"],
                                   hp["beta2"])
        return {"exp_avg": m, "exp_avg_sq": v} | ({"max_exp_avg_sq": v_max} if spec.amsgrad else {})

    def update(self, spec, g, new, hp, pp, w=None):
        v_used = new["max_exp_avg_sq"] if spec.amsgrad else new["exp_avg_sq"]
        return adam_direction_corrected(new["exp_avg"], v_used, spec.eps, pp["inv_bias_correction1"],
                                        pp["inv_bias_correction2_sqrt"])

    def vhat_sum(self, spec, new, pp):
        v_used = new["max_exp_avg_sq"] if spec.amsgrad else new["exp_avg_sq"]
        c2 = pp["inv_bias_correction2_sqrt"]
        vhat = v_used * (c2 * c2)
        if hasattr(vhat, "items"):  # a TensorList: one sum per tensor, added up
            total = 0
            for t in vhat.items:
                total = total + (t.reshape(t.shape[0], -1).sum(1) if spec.stacked else t.sum())
            return total
        return vhat.reshape(vhat.shape[0], -1).sum(1) if spec.stacked else vhat.sum()

    def rule_eps(self, spec):
        return spec.eps

    def equilibrium_beta(self, group):
        return None if group.get("amsgrad", False) else group["betas"][0]

    def averages(self, group):
        return {"exp_avg": group["betas"][0], "exp_avg_sq": group["betas"][1]}

    def foreach_moments_(self, bucket, g):
        beta1, beta2 = bucket.raw["beta1"], bucket.raw["beta2"]
        m, v = bucket.states["exp_avg"], bucket.states["exp_avg_sq"]
        torch._foreach_lerp_(m, g, 1 - beta1)  # m + (1 − β₁)·(g − m) for β₁ > 0.5, as adam_moments
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, 1 - beta2)
        if bucket.spec.amsgrad:
            torch._foreach_maximum_(bucket.states["max_exp_avg_sq"], v)

    def foreach_update_(self, bucket, g, strength, lr):
        spec, states, pp, params = bucket.spec, bucket.states, bucket.pp, bucket.params
        rule = spec.rule
        m = states["exp_avg"]
        D = torch._foreach_sqrt(states["max_exp_avg_sq"] if spec.amsgrad else states["exp_avg_sq"])
        torch._foreach_mul_(D, pp["inv_bias_correction2_sqrt"])
        torch._foreach_add_(D, spec.eps)
        c1 = pp["inv_bias_correction1"]
        u = None
        if "u" in rule.needs and "D" not in rule.needs and rule.acts == "before":
            u, D = D, None  # D is not needed after u: u = c1·m/D in its memory (a fresh tensor costs page faults)
            torch._foreach_reciprocal_(u)
            torch._foreach_mul_(u, m)
            torch._foreach_mul_(u, c1)
        elif "u" in rule.needs:
            u = torch._foreach_div(m, D)
            torch._foreach_mul_(u, c1)
        if rule.acts == "before":
            rule.apply_(params, strength=strength, u=u, D=D)
        uniform = all(isinstance(x, float) for x in lr) and len(set(lr)) == 1
        if u is None and uniform and all(c.is_cpu for c in c1):
            # w − lr·c1·m/D in one pass (torch's foreach Adam does the same)
            torch._foreach_addcdiv_(params, m, D, [-lr[0] * float(c) for c in c1])
        elif u is not None and uniform:
            torch._foreach_add_(params, u, alpha=-lr[0])
        else:
            if u is None:
                u = torch._foreach_div(m, D)
                torch._foreach_mul_(u, c1)
            torch._foreach_sub_(params, torch._foreach_mul(u, lr))
        if rule.acts == "after":
            rule.apply_(params, strength=strength, u=u, D=D)



ADAM = register(AdamDirection())


class Adam(DecayOptimizer):
    r"""Adam with any decay rule. With the defaults it is ``torch.optim.Adam`` (L2 in the gradient).

    .. math::

        m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad v_t = β_2 v_{t-1} + (1-β_2) g_t^2,\quad
        u_t = \frac{m_t/(1-β_1^t)}{\sqrt{v_t/(1-β_2^t)} + ε}

    and ``w ← w − lr_t·u_t`` combined with the decay rule (see :mod:`decaylab.optim.rules`).
    ``weight_decay`` uses the convention of ``decay_scale``: with ``"lr"`` (default) it is
    torch's λ; with ``"schedule"`` it is the AdamW paper's λ (``λ_paper = λ_torch · max_lr``).
    torch's own keywords work too: ``decoupled_weight_decay=True`` is AdamW; ``foreach=True`` and
    ``fused=True`` choose those executors; ``capturable`` and ``differentiable`` may only be False.

    Example:
        >>> import torch
        >>> from decaylab.optim import Adam
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = Adam([w], lr=0.1, weight_decay=0.5, decay="decoupled")
        >>> w.grad = torch.zeros(3); opt.step()
        >>> round(w[0].item(), 4)  # pure decay: 1 − 0.1·0.5
        0.95
    """

    direction = ADAM

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | Tensor | Callable[[int], float] = 0.0,
        amsgrad: bool = False,
        *,
        decay: str | rules.DecayRule = "l2",
        decay_scale: str = "lr",
        max_lr: float | Tensor | None = None,
        decay_to: str = "zero",
        maximize: bool = False,
        backend: str = "auto",
        low_precision: str = "kahan",
        state_dtype: torch.dtype | None = None,
        state_rounding: str = "nearest",
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        decoupled_weight_decay: bool | None = None,
    ):
        backend = torch_compat.backend_from_torch_flags(type(self).__name__, backend, foreach=foreach, fused=fused,
                                                        capturable=capturable, differentiable=differentiable)
        decay = torch_compat.decay_from_torch_flag(type(self).__name__, decay, decoupled_weight_decay)
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decay=decay, decay_scale=decay_scale,
            decay_to=decay_to, amsgrad=amsgrad, maximize=maximize, backend=backend, low_precision=low_precision,
        )
        defaults.update(state_dtype=state_dtype, state_rounding=state_rounding)
        defaults[torch_compat.MAX_LR] = max_lr
        super().__init__(params, defaults)
