r"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2), as a direction and an optimizer.

::

    c_t = β₁·m_{t−1} + (1 − β₁)·g_t
    u_t = sign(c_t)                         (sign(0) = 0)
    w  ← w − lr_t·(u_t + λ·w)               (Alg. 2: decoupled decay, lr-scaled: decaylab's default rule)
    m_t = β₂·m_{t−1} + (1 − β₂)·g_t

Every coordinate of the update has size 1 (or 0), while Adam's are smaller (``|m̂/sqrt(v̂)| ≤ 1`` and
mostly well below): the paper advises an lr 3–10× smaller than AdamW's and a λ 3–10× larger, so that
the decay per step ``lr·λ`` stays about the same. Coupled L2 (``decay="l2"``: ``λ·w`` added to ``g``
before the sign) is a different algorithm, and a known pitfall (bitsandbytes #1992 applied Lion's decay
that way).

The functions are pure and work on a tensor or a :class:`~decaylab.optim.tensorlist.TensorList`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .. import rules, torch_compat
from ..optimizer import DecayOptimizer
from .base import Direction, check_betas, register


def lion_direction(g, m, beta1):
    """``u_t = sign(β₁·m_{t−1} + (1 − β₁)·g_t)``."""
    return (m * beta1 + g * (1 - beta1)).sign()


def lion_momentum(g, m, beta2):
    """``m_t = β₂·m_{t−1} + (1 − β₂)·g_t``."""
    return m * beta2 + g * (1 - beta2)


class LionDirection(Direction):
    r"""Lion's direction: ``u_t = sign(β₁m + (1 − β₁)g)``; its momentum ``m`` (state ``exp_avg``) follows β₂.

    It gives a rule ``u`` only: no per-coordinate metric ``D`` (the sign has none) and no ``v̂``.
    """

    name = "lion"
    provides = frozenset({"u"})
    state = ("exp_avg",)

    def validate(self, group):
        check_betas(group, one_allowed=True)

    def init_state(self, p, state, spec):
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, dtype=spec.state_dtype, memory_format=torch.preserve_format)
            return True
        return False

    def hparams(self, group):
        beta1, beta2 = group["betas"]
        return {"beta1": beta1, "beta2": beta2}

    def moments(self, spec, g, st, hp, pp):
        m = st["exp_avg"]
        # the direction reads m before its update: it is computed here and handed to update()
        return {"exp_avg": lion_momentum(g, m, hp["beta2"]), "_u": lion_direction(g, m, hp["beta1"])}

    def update(self, spec, g, new, hp, pp, w=None):
        return new["_u"], None

    def averages(self, group):
        return {"exp_avg": group["betas"][1]}

    def equilibrium_beta(self, group):
        # Each coordinate's update is ±1 whatever the momentum, so the per-step update norm is fixed; with
        # β₁ = 0 consecutive updates are as independent as the gradients and the rotational equilibrium
        # is Kosson et al.'s with β = 0, sqrt(2·lr·λ). With β₁ > 0 the sign of a running average correlates
        # consecutive updates in a way that depends on the gradients' distribution: no closed form.
        return 0.0 if group["betas"][0] == 0 else None

    # ------------------------------------------------------------------ foreach, in place

    def foreach_moments_(self, bucket, g):
        beta1, beta2 = bucket.raw["beta1"], bucket.raw["beta2"]
        m = bucket.states["exp_avg"]
        u = torch._foreach_mul(m, beta1)
        torch._foreach_add_(u, g, alpha=1 - beta1)
        torch._foreach_sign_(u)
        bucket.pp["_u"] = u
        torch._foreach_mul_(m, beta2)
        torch._foreach_add_(m, g, alpha=1 - beta2)

    def foreach_update_(self, bucket, g, strength, lr):
        rule, params = bucket.spec.rule, bucket.params
        u = bucket.pp.pop("_u")
        if rule.acts == "before":
            rule.apply_(params, strength=strength, u=u, D=None)
        if all(isinstance(x, float) for x in lr) and len(set(lr)) == 1:
            torch._foreach_add_(params, u, alpha=-lr[0])
        else:
            torch._foreach_sub_(params, torch._foreach_mul(u, lr))
        if rule.acts == "after":
            rule.apply_(params, strength=strength, u=u, D=None)


LION = register(LionDirection())


class Lion(DecayOptimizer):
    r"""Lion with any decay rule; by default the paper's Alg. 2 (decoupled, lr-scaled decay).

    ``Lion(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)`` as in the paper and its public
    implementations; ``decay``, ``decay_scale``, ``max_lr``, ``decay_to``, ``backend`` and
    ``low_precision`` as for :class:`~decaylab.optim.Adam`. λ is typically 3–10× AdamW's (see the
    module docstring).

    Example:
        >>> import torch
        >>> from decaylab.optim import Lion
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
        >>> opt = Lion([w], lr=0.1, weight_decay=0.5)
        >>> w.grad = torch.tensor([0.3, 0.0]); opt.step()
        >>> w.data  # 1 − 0.1·0.5 − 0.1·sign(0.03); −1 + 0.05 − 0.1·sign(0)
        tensor([ 0.8500, -0.9500])
    """

    direction = LION

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float | Tensor | Callable[[int], float] = 0.0,
        *,
        maximize: bool = False,
        decay: str | rules.DecayRule = "decoupled",
        decay_scale: str = "lr",
        max_lr: float | Tensor | None = None,
        decay_to: str = "zero",
        backend: str = "auto",
        low_precision: str = "kahan",
        state_dtype: torch.dtype | None = None,
        state_rounding: str = "nearest",
        foreach: bool | None = None,
    ):
        backend = torch_compat.backend_from_torch_flags(type(self).__name__, backend, foreach=foreach)
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, decay=decay, decay_scale=decay_scale,
                        decay_to=decay_to, maximize=maximize, backend=backend, low_precision=low_precision)
        defaults.update(state_dtype=state_dtype, state_rounding=state_rounding)
        defaults[torch_compat.MAX_LR] = max_lr
        super().__init__(params, defaults)
