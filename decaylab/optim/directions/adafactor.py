r"""Adafactor (Shazeer & Stern 2018) as ``torch.optim.Adafactor`` computes it, as a direction and an optimizer.

For step ``t`` (torch's conventions: ``β̂₂`` from ``beta2_decay``, the relative step size ``ρ``)::

    1 − β₂,t = t^beta2_decay                     ρ_t = min(lr_t, 1/sqrt(t))
    α_t = max(ε₂, RMS(w))·ρ_t                    (RMS of the weights before the step's decay)
    R_t = R + (1 − β₂,t)·(mean_cols(g²) − R),  C_t = C + (1 − β₂,t)·(mean_rows(g²) − C)     (≥ 2-D: factored)
    v̂_t = R_t·C_t / mean(R_t) (clamped below by ε₁)          or, for a vector, v_t = v + (1 − β₂,t)(g² − v)
    ĝ = g / sqrt(max(v̂_t, ε₁²)),  step = α_t·ĝ / max(1, RMS(ĝ)/d)

In decaylab's terms ``w ← w − lr_t·u_t`` with ``u_t = step / lr_t`` (``ρ_t/lr_t = min(1, 1/(lr_t·sqrt(t)))``,
finite at ``lr_t = 0``), and the decay is the rule's: torch's is decoupled and lr-scaled, ``w·(1 − lr_t·λ)``
(with ``lr_t``, not ``ρ_t``). ``ε₁ = None`` is the parameters' dtype's machine epsilon.

Factored moments reduce over rows and columns and the clipping over the whole tensor (per model when K
models are stacked): not element-wise, it runs on the reference executor.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .. import rules, torch_compat
from ..optimizer import DecayOptimizer
from .base import Direction, is_number, register, step_dtype


def _rms(x: Tensor, stacked: bool) -> Tensor:
    """The root mean square of a tensor, or of each model's slice (shape (K, 1, ..., 1)) when stacked."""
    if not stacked:
        return x.norm(2) / math.sqrt(x.numel())
    dims = tuple(range(1, x.dim()))
    n = x[0].numel()
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True) / math.sqrt(n) if dims else x.abs()


class AdafactorDirection(Direction):
    r"""Adafactor's direction: the gradient over a factored (rows × columns) second moment, clipped by RMS.

    It gives a rule ``u`` only. State: ``step``, and ``row_var``/``col_var`` (factored, for parameters of
    two dims or more per model) or ``variance`` (vectors), as torch names them.
    """

    name = "adafactor"
    elementwise = False
    provides = frozenset({"u"})

    def validate(self, group):
        if not is_number(group["beta2_decay"]) or not group["beta2_decay"] <= 0:
            raise ValueError(f"beta2_decay must be a number <= 0; got {group['beta2_decay']!r}")
        eps = group["eps"]
        if not (isinstance(eps, (tuple, list)) and len(eps) == 2):
            raise ValueError(f"eps must be a pair (eps1 or None, eps2); got {eps!r}")
        if eps[0] is not None and (not is_number(eps[0]) or not eps[0] >= 0):
            raise ValueError(f"eps[0] must be None or a number >= 0; got {eps[0]!r}")
        if not is_number(eps[1]) or not eps[1] >= 0:
            raise ValueError(f"eps[1] must be a number >= 0; got {eps[1]!r}")
        group["eps"] = (None if eps[0] is None else float(eps[0]), float(eps[1]))
        if not is_number(group["d"]) or not group["d"] >= 1:
            raise ValueError(f"d must be a number >= 1 (the clipping threshold); got {group['d']!r}")

    def options(self, group):
        return {"beta2_decay": float(group["beta2_decay"]), "eps1": group["eps"][0], "eps2": group["eps"][1],
                "d": float(group["d"])}

    def bucket_options(self, p, stacked):
        return {"factored": p.dim() - int(stacked) > 1, "dtype_eps": torch.finfo(p.dtype).eps}

    def state_keys(self, spec):
        return ("row_var", "col_var") if spec.factored else ("variance",)

    def state_shape(self, key, p):
        if key == "row_var":
            return (*p.shape[:-1], 1)
        if key == "col_var":
            return (*p.shape[:-2], 1, p.shape[-1])
        return () if key == "step" else tuple(p.shape)

    def init_state(self, p, state, spec):
        if "step" in state:
            return False
        state["step"] = torch.tensor(0.0, dtype=step_dtype())
        if spec.factored:
            state["row_var"] = p.new_zeros((*p.shape[:-1], 1), dtype=spec.state_dtype)
            state["col_var"] = p.new_zeros((*p.shape[:-2], 1, p.shape[-1]), dtype=spec.state_dtype)
        else:
            state["variance"] = torch.zeros_like(p, dtype=spec.state_dtype, memory_format=torch.preserve_format)
        return True

    def prepare(self, group, spec, params, states, fresh, tensor):
        steps = [st["step"] for st in states]
        torch._foreach_add_(steps, 1.0)
        out = {"one_minus_beta2": [], "inv_sqrt_t": []}
        for s in steps:
            t = float(s)
            out["one_minus_beta2"].append(tensor(t ** spec.beta2_decay))
            out["inv_sqrt_t"].append(tensor(1 / t ** 0.5))
        return out

    def moments(self, spec, g, st, hp, pp):
        w = pp["one_minus_beta2"]
        if spec.factored:
            # (g·g).mean over a dim, as torch forms it (a norm, squared, over the dim's size)
            row_mean = torch.norm(g, dim=-1, keepdim=True).square() / g.size(-1)
            col_mean = torch.norm(g, dim=-2, keepdim=True).square() / g.size(-2)
            return {"row_var": torch.lerp(st["row_var"], row_mean, w),
                    "col_var": torch.lerp(st["col_var"], col_mean, w)}
        return {"variance": torch.lerp(st["variance"], g * g, w)}

    def update(self, spec, g, new, hp, pp, w=None):
        eps1 = spec.dtype_eps if spec.eps1 is None else spec.eps1
        # (in place on fresh temporaries only: the inputs are never written)
        if spec.factored:
            row, col = new["row_var"], new["col_var"]
            ghat = (row @ col).div_(row.mean(dim=-2, keepdim=True).clamp(min=eps1))
        else:
            ghat = new["variance"].clone()
        ghat = ghat.clamp_(min=eps1 * eps1).rsqrt_().mul_(g)
        lr = hp["lr"]
        # ρ_t / lr_t = min(1, 1/(lr_t·sqrt(t))): the step over lr_t, finite where lr_t = 0
        rho_over_lr = torch.clamp(pp["inv_sqrt_t"] / lr, max=1.0) if isinstance(lr, Tensor) else min(
            1.0, pp["inv_sqrt_t"] / lr if lr else 1.0)
        scale = torch.clamp(_rms(w, spec.stacked), min=spec.eps2) * rho_over_lr
        denom = torch.clamp(_rms(ghat, spec.stacked) / spec.d, min=1.0)
        return ghat.mul_(scale / denom), None


ADAFACTOR = register(AdafactorDirection())


class Adafactor(DecayOptimizer):
    r"""Adafactor with any decay rule that needs no more than ``u``; by default ``torch.optim.Adafactor``'s.

    ``Adafactor(params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, *,
    maximize=False, decay="decoupled", decay_scale="lr", max_lr=None, decay_to="zero", ...)``:
    torch.optim.Adafactor's arguments, and its result (tested in float64).

    Example:
        >>> import torch
        >>> from decaylab.optim import Adafactor
        >>> w = torch.nn.Parameter(torch.ones(2, 3))
        >>> opt = Adafactor([w], lr=1e-2, weight_decay=0.5)
        >>> w.grad = torch.zeros(2, 3); opt.step()
        >>> round(w[0, 0].item(), 6)  # pure decay: 1 − lr·λ
        0.995
    """

    direction = ADAFACTOR

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
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
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay, decay=decay,
                        decay_scale=decay_scale, decay_to=decay_to, maximize=maximize, backend=backend,
                        low_precision=low_precision)
        defaults.update(state_dtype=state_dtype, state_rounding=state_rounding)
        defaults[torch_compat.MAX_LR] = max_lr
        super().__init__(params, defaults)
