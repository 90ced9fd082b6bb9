r"""Muon (K. Jordan 2024; ``torch.optim.Muon``), as a direction and an optimizer.

For a 2-D parameter (a hidden matrix), with torch's conventions::

    B_t = B_{t−1} + (1 − μ)·(g_t − B_{t−1})          (torch: B.lerp_(g, 1 − μ))
    G_t = g_t.lerp(B_t, μ) if nesterov else B_t
    O_t = NS₅(G_t)                                   (5 quintic Newton–Schulz steps, coefficients (a, b, c))
    u_t = r(A, B)·O_t,  w ← w − lr_t·u_t             (and the decay rule: torch's is decoupled, w·(1 − lr_t·λ))

``NS`` divides ``G`` by its Frobenius norm (at least ``eps``), works on the wide orientation (a tall
matrix is transposed), and iterates ``X ← a·X + (b·XXᵀ + c·(XXᵀ)²)·X``; torch runs it in bf16, and so
does decaylab by default (``ns_dtype=torch.float32``/``float64`` iterates in that dtype instead). The
lr ratio ``r`` of an ``A × B`` matrix is ``adjust_lr_fn``'s: ``"original"``/None ``sqrt(max(1, A/B))``
(Keller Jordan), ``"match_rms_adamw"`` ``0.2·sqrt(max(A, B))`` (Liu et al. 2025, "Muon is Scalable for
LLM Training": the update's RMS matches AdamW's, so AdamW's lr and λ carry over). The decay uses the
unadjusted ``lr_t``, as torch's does.

2-D parameters only (K stacked models: (K, m, n), orthogonalized per model with batched matmuls);
embeddings, heads, norms and biases go to an AdamW group (``decaylab.groups``' ``muon`` preset splits
them). Not element-wise: it runs on the reference executor.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .. import rules, torch_compat
from ..optimizer import DecayOptimizer
from .base import Direction, is_number, register

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
NS_DTYPES = (torch.bfloat16, torch.float32, torch.float64)


def newton_schulz(G: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """The orthogonalized ``G`` (approximately ``UVᵀ`` of its SVD), per matrix of the last two dims."""
    a, b, c = coefficients
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.transpose(-2, -1)
    if X.dim() == 2:
        X = X / X.norm().clamp(min=eps)
        for _ in range(steps):
            A = X @ X.T
            B = torch.addmm(A, A, A, beta=b, alpha=c)
            X = torch.addmm(X, B, X, beta=a)
    else:  # K stacked models: each matrix by itself
        X = X / torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True).clamp(min=eps)
        for _ in range(steps):
            A = X @ X.transpose(-2, -1)
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, B, X, beta=a)
    return X.transpose(-2, -1) if tall else X


def adjusted_ratio(adjust_lr_fn: str | None, rows: int, cols: int) -> float:
    """``r(A, B)``: the factor on the lr of an ``rows × cols`` matrix (torch.optim.Muon's ``_adjust_lr``)."""
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    return 0.2 * math.sqrt(max(rows, cols))


class MuonDirection(Direction):
    r"""Muon's direction: the orthogonalized (Nesterov) momentum of a matrix, times the shape's lr ratio.

    It gives a rule ``u`` only (no per-coordinate metric, no ``v̂``). Not element-wise.
    """

    name = "muon"
    elementwise = False
    provides = frozenset({"u"})
    state = ("momentum_buffer",)

    def validate(self, group):
        momentum = group["momentum"]
        if not is_number(momentum) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1); got {momentum!r}")
        coefficients = group["ns_coefficients"]
        if not (isinstance(coefficients, (tuple, list)) and len(coefficients) == 3
                and all(is_number(x) and math.isfinite(x) for x in coefficients)):
            raise ValueError(f"ns_coefficients must be three finite numbers (a, b, c); got {coefficients!r}")
        group["ns_coefficients"] = tuple(float(x) for x in coefficients)
        steps = group["ns_steps"]
        if not isinstance(steps, int) or isinstance(steps, bool) or not 0 < steps < 100:
            raise ValueError(f"ns_steps must be an int in [1, 100); got {steps!r}")
        if not is_number(group["eps"]) or not math.isfinite(group["eps"]) or group["eps"] <= 0:
            raise ValueError(f"eps must be a finite number > 0; got {group['eps']!r}")
        if group["adjust_lr_fn"] not in ADJUST_LR_FNS:
            raise ValueError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS}; got {group['adjust_lr_fn']!r}")
        if group["ns_dtype"] not in NS_DTYPES:
            raise ValueError(f"ns_dtype must be one of {', '.join(map(str, NS_DTYPES))}; got {group['ns_dtype']!r}")

    def check_param(self, p, stacked):
        if p.dim() != (3 if stacked else 2):
            shape = "(K, rows, cols) for K stacked models" if stacked else "(rows, cols)"
            raise ValueError(
                f"params: Muon orthogonalizes matrices and takes parameters of shape {shape}; got one of shape "
                f"{tuple(p.shape)}. Optimize embeddings, heads, norms and biases with AdamW "
                "(decaylab.groups.param_groups(model, preset='muon') splits a model's parameters)"
            )

    def options(self, group):
        return {"momentum": float(group["momentum"]), "nesterov": bool(group["nesterov"]),
                "ns_coefficients": group["ns_coefficients"], "ns_steps": group["ns_steps"],
                "eps": float(group["eps"]), "adjust_lr_fn": group["adjust_lr_fn"], "ns_dtype": group["ns_dtype"]}

    def init_state(self, p, state, spec):
        if state.get("momentum_buffer") is None:
            state["momentum_buffer"] = torch.zeros_like(p, dtype=spec.state_dtype, memory_format=torch.preserve_format)
            return True
        return False

    def moments(self, spec, g, st, hp, pp):
        return {"momentum_buffer": torch.lerp(st["momentum_buffer"], g, 1 - spec.momentum)}

    def update(self, spec, g, new, hp, pp, w=None):
        buf = new["momentum_buffer"]
        G = torch.lerp(g, buf, spec.momentum) if spec.nesterov else buf
        ortho = newton_schulz(G, spec.ns_coefficients, spec.ns_steps, spec.eps, spec.ns_dtype).to(G.dtype)
        return ortho * adjusted_ratio(spec.adjust_lr_fn, G.size(-2), G.size(-1)), None

    def averages(self, group):
        return {"momentum_buffer": group["momentum"]}

    def equilibrium_beta(self, group):
        # The orthogonalized update's size is fixed by its shape; without momentum consecutive updates are
        # as independent as the gradients, and the equilibrium is Kosson et al.'s with β = 0, sqrt(2·lr·λ)
        # (the lr ratio cancels: it scales the update and the equilibrium norm alike). With momentum, the
        # orthogonalization of a running average correlates consecutive updates: no closed form.
        return 0.0 if group["momentum"] == 0 else None


MUON = register(MuonDirection())


class Muon(DecayOptimizer):
    r"""Muon with any decay rule that needs no more than ``u``; by default ``torch.optim.Muon``'s.

    ``Muon(params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True, ns_coefficients=(3.4445,
    -4.775, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None, *, decay="decoupled", decay_scale="lr",
    max_lr=None, decay_to="zero", ns_dtype=torch.bfloat16, ...)``: the defaults and ``adjust_lr_fn``
    values of ``torch.optim.Muon``, whose result it gives in fp32 (tested). ``decay="prox"`` is Muon with
    ProxAdam-style decay, ``decay="cautious"`` with cautious decay; the rules that need Adam's ``D`` or
    ``v̂`` (``prox_euclid``, ``stable``) are refused.

    Example:
        >>> import torch
        >>> from decaylab.optim import Muon
        >>> w = torch.nn.Parameter(torch.eye(2))
        >>> opt = Muon([w], lr=0.1, weight_decay=0.0, momentum=0.0, ns_dtype=torch.float64)
        >>> w.grad = torch.tensor([[2.0, 0.0], [0.0, 1.0]]); opt.step()
        >>> [round(x, 2) for x in w.diagonal().tolist()]  # both directions move by about lr (NS: singular values ≈ 1)
        [0.93, 0.89]
    """

    direction = MUON

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        weight_decay: float | Tensor | Callable[[int], float] = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        decay: str | rules.DecayRule = "decoupled",
        decay_scale: str = "lr",
        max_lr: float | Tensor | None = None,
        decay_to: str = "zero",
        ns_dtype: torch.dtype = torch.bfloat16,
        maximize: bool = False,
        backend: str = "auto",
        low_precision: str = "kahan",
        state_dtype: torch.dtype | None = None,
        state_rounding: str = "nearest",
    ):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                        decay=decay, decay_scale=decay_scale, decay_to=decay_to, ns_dtype=ns_dtype,
                        maximize=maximize, backend=backend, low_precision=low_precision)
        defaults.update(state_dtype=state_dtype, state_rounding=state_rounding)
        defaults[torch_compat.MAX_LR] = max_lr
        super().__init__(params, defaults)
