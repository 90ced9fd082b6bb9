r"""SGD with momentum μ and dampening δ (torch's conventions), as a direction and as an optimizer.

::

    b_t = μ·b_{t−1} + (1 − δ)·g_t            (b_1 = g_1)
    u_t = g_t + μ·b_t (nesterov) or b_t      (u_t = g_t without momentum)

The functions are pure and work on a tensor or a :class:`~decaylab.optim.tensorlist.TensorList`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .. import rules, torch_compat
from ..optimizer import DecayOptimizer
from .base import Direction, is_number, register


def sgd_momentum(g, buf, keep, gain):
    """New momentum buffer ``keep·b + gain·g``: ``(0, 1)`` on the first step, ``(μ, 1 − δ)`` after."""
    return buf * keep + g * gain


def sgd_direction(g, buf, momentum, nesterov):
    """``u_t``: the gradient, the buffer, or Nesterov's ``g + μ·b``."""
    if buf is None:
        return g
    return g + buf * momentum if nesterov else buf


# --------------------------------------------------------------------------- directions as objects


class SGDDirection(Direction):
    r"""SGD with momentum μ, dampening δ, Nesterov (torch's conventions): ``u_t = b_t`` or ``g_t + μ·b_t``.

    ``b_t = μ·b_{t−1} + (1 − δ)·g_t`` with ``b_1 = g_1``; ``u_t = g_t`` without momentum. ``D_t = 1``;
    the stable form's ``mean v̂`` is the constant ``((1 − μ)/(1 − δ))²`` (SGDS). State:
    ``momentum_buffer`` (with momentum).
    """

    name = "sgd"
    provides = frozenset({"u", "D", "mean_vhat"})
    statistic = "constant"
    linear = True
    normalized = False
    state = ("momentum_buffer",)

    def validate(self, group):
        momentum, dampening = group["momentum"], group["dampening"]
        if not is_number(momentum) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1); got {momentum!r}")
        if not is_number(dampening) or not 0 <= dampening <= 1:
            raise ValueError(f"dampening must be a number in [0, 1]; got {dampening!r}")
        if group["nesterov"] and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")
        if group["decay"] == "stable" and dampening == 1:
            raise ValueError("dampening must be < 1 with decay='stable' (it divides by 1 − dampening)")

    def options(self, group):
        return {"momentum": float(group["momentum"]), "nesterov": bool(group["nesterov"])}

    def state_keys(self, spec):
        return self.state if spec.momentum != 0 else ()

    def init_state(self, p, state, spec):
        if spec.momentum != 0 and state.get("momentum_buffer") is None:
            state["momentum_buffer"] = torch.zeros_like(p, dtype=spec.state_dtype, memory_format=torch.preserve_format)
            return True
        return False

    def prepare(self, group, spec, params, states, fresh, tensor):
        if spec.momentum == 0:
            return {}
        # torch starts the buffer at g on the first step: b_1 = 0·b_0 + 1·g_1.
        return {"keep": [tensor(0.0 if first else spec.momentum) for first in fresh],
                "gain": [tensor(1.0 if first else 1.0 - group["dampening"]) for first in fresh]}

    def moments(self, spec, g, st, hp, pp):
        if spec.momentum == 0:
            return {}
        return {"momentum_buffer": sgd_momentum(g, st["momentum_buffer"], pp["keep"], pp["gain"])}

    def update(self, spec, g, new, hp, pp, w=None):
        return sgd_direction(g, new.get("momentum_buffer"), spec.momentum, spec.nesterov), 1.0

    def mean_vhat(self, group):
        return ((1 - group["momentum"]) / (1 - group["dampening"])) ** 2

    def foreach_moments_(self, bucket, g):
        if bucket.spec.momentum == 0:
            return
        buf, pp = bucket.states["momentum_buffer"], bucket.pp
        torch._foreach_mul_(buf, pp["keep"])  # b ← keep·b + gain·g (0 and 1 on a buffer's first step)
        torch._foreach_add_(buf, torch._foreach_mul(g, pp["gain"]))

    def foreach_update_(self, bucket, g, strength, lr):
        spec, params = bucket.spec, bucket.params
        rule = spec.rule
        if spec.momentum == 0:
            u = g
        elif spec.nesterov:
            u = torch._foreach_add(g, bucket.states["momentum_buffer"], alpha=spec.momentum)
        else:
            u = bucket.states["momentum_buffer"]
        if rule.acts == "before":
            rule.apply_(params, strength=strength, u=u, D=None)
        if all(isinstance(x, float) for x in lr) and len(set(lr)) == 1:
            torch._foreach_add_(params, u, alpha=-lr[0])
        else:
            torch._foreach_sub_(params, torch._foreach_mul(u, lr))
        if rule.acts == "after":
            rule.apply_(params, strength=strength, u=u, D=None)

    def averages(self, group):
        return {"momentum_buffer": group["momentum"]}

    def equilibrium_beta(self, group):
        return None if group.get("nesterov", False) else group.get("momentum", 0.0)



SGD_DIRECTION = register(SGDDirection())


class SGD(DecayOptimizer):
    r"""SGD (with momentum) and any decay rule. With the defaults it is ``torch.optim.SGD``.

    .. math::

        b_t = μ b_{t-1} + (1-δ) g_t \;(b_1 = g_1),\quad u_t = g_t + μ b_t \text{ (Nesterov) or } b_t

    and ``w ← w − lr_t·u_t`` combined with the decay rule. With ``momentum=0`` the forms ``l2``
    and ``decoupled`` (scale ``"lr"``) coincide. ``prox_euclid`` equals ``prox`` here (``D = 1``);
    ``stable`` multiplies the decay by ``(1 − δ)/(1 − μ)`` (SGDS).

    Example:
        >>> import torch
        >>> from decaylab.optim import SGDW
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> opt = SGDW([w], lr=0.1, momentum=0.9, weight_decay=0.1)
        >>> w.grad = torch.zeros(2); opt.step()
        >>> round(w[0].item(), 4)  # 1 − 0.1·0.1
        0.99
    """

    direction = SGD_DIRECTION

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float | Tensor | Callable[[int], float] = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        decay: str | rules.DecayRule = "l2",
        decay_scale: str = "lr",
        max_lr: float | Tensor | None = None,
        decay_to: str = "zero",
        backend: str = "auto",
        low_precision: str = "kahan",
        state_dtype: torch.dtype | None = None,
        state_rounding: str = "nearest",
        foreach: bool | None = None,
        fused: bool | None = None,
        differentiable: bool = False,
    ):
        backend = torch_compat.backend_from_torch_flags(type(self).__name__, backend, foreach=foreach, fused=fused,
                                                        differentiable=differentiable)
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov, decay=decay,
            decay_scale=decay_scale, decay_to=decay_to, maximize=maximize, backend=backend,
            low_precision=low_precision,
        )
        defaults.update(state_dtype=state_dtype, state_rounding=state_rounding)
        defaults[torch_compat.MAX_LR] = max_lr
        super().__init__(params, defaults)
