r"""Decay rules: where the decay acts (*form*), how strong one step is (*scale*), what it pulls toward.

Every function here is pure and small and works on a single tensor *or* on a
:class:`~decaylab.optim.tensorlist.TensorList` (the foreach path), because it uses only
arithmetic operators and a few methods both share. Hyperparameters (``s``, ``lam``, ``D``)
are tensors that broadcast against the weights: 0-dim for one model, shape ``(K, 1, ..., 1)``
for ``K`` models stacked along dim 0.

Notation (``reference/methods.md``): ``w`` weights, ``w_ref`` the decay target (``None`` for zero),
``lr_t`` the scheduled learning rate, ``lr_max`` the group's peak learning rate, ``s_t`` the decay
scale below, ``λ`` the weight decay, ``u_t`` the optimizer's direction (the step is ``w − lr_t·u_t``),
``D_t = ε + sqrt(v̂_t)`` Adam's denominator.

Forms
-----
=============  =======================================================  ================================
form           update                                                   source
=============  =======================================================  ================================
``l2``         ``g ← g + λ·(w − w_ref)`` before the moments             Loshchilov & Hutter, Alg. 1–2
``decoupled``  ``w ← w − s_t·λ·(w − w_ref)``, then the step             torch ``AdamW``
``prox``       ``w ← w_ref + (w − lr_t·u_t − w_ref) / (1 + s_t·λ)``     Zhuang et al. 2022 (ProxAdam)
``prox_euclid`` ``w ← w_ref + (w − lr_t·u_t − w_ref) / (1 + s_t·λ/D_t)`` Schaipp 2023 ("AdamP")
``cautious``   decoupled where ``u_t·(w − w_ref) ≥ 0`` only             Cautious Weight Decay, Alg. 1
``stable``     ``w ← w − s_t·λ·(w − w_ref)/sqrt(mean v̂_t)`` (Adam)      Xie et al. (AdamS / SGDS)
=============  =======================================================  ================================

Scales
------
==============  ========================  ============================================================
scale           ``s_t``                   convention
==============  ========================  ============================================================
``lr``          ``lr_t``                  torch, optax, timm: ``λ_torch = λ_paper / lr_max``
``schedule``    ``lr_t / lr_max``         the AdamW paper (``η_t·λ``): ``λ_paper = λ_torch · lr_max``
``corrected``   ``lr_t² / lr_max``        AdamC (Defazio 2025)
``constant``    ``1``                     fixed decay per step, independent of the lr
==============  ========================  ============================================================
"""
from __future__ import annotations

from typing import Any

FORMS = ("l2", "decoupled", "prox", "prox_euclid", "cautious", "stable")
SCALES = ("lr", "schedule", "corrected", "constant")
TARGETS = ("zero", "init")
# Forms that shrink the weights before the step (a multiplicative pull toward w_ref).
PRE_STEP_FORMS = ("decoupled", "cautious", "stable")
# Forms that divide after the step (a proximal map).
POST_STEP_FORMS = ("prox", "prox_euclid")


def decay_scale(scale: str, lr: Any, max_lr: Any) -> Any:
    r"""The per-step decay strength ``s_t`` for a decay *scale* name.

    ``lr`` → ``lr_t``; ``schedule`` → ``lr_t / lr_max``; ``corrected`` → ``lr_t² / lr_max``;
    ``constant`` → ``1``. Works on floats and tensors alike.

    >>> decay_scale("schedule", 0.05, 0.1), decay_scale("corrected", 0.05, 0.1)
    (0.5, 0.025)
    """
    if scale == "lr":
        return lr
    if scale == "schedule":
        return lr / max_lr
    if scale == "corrected":
        return lr * lr / max_lr
    if scale == "constant":
        return 1.0 if isinstance(lr, (int, float)) else lr * 0 + 1
    raise ValueError(f"decay_scale must be one of {SCALES}, got {scale!r}")


def offset(w, w_ref):
    """``w − w_ref``, or ``w`` itself when decaying toward zero (``w_ref is None``)."""
    return w if w_ref is None else w - w_ref


def l2_gradient(g, w, w_ref, lam):
    r"""Coupled L2: ``g ← g + λ·(w − w_ref)`` (the gradient of ``λ/2·‖w − w_ref‖²`` added to the loss's)."""
    return g + offset(w, w_ref) * lam


def decoupled(w, w_ref, s, lam):
    r"""Decoupled decay before the step: ``w ← w − s_t·λ·(w − w_ref)``."""
    return w - offset(w, w_ref) * (s * lam)


def cautious(w, w_ref, u, s, lam):
    r"""Cautious decay: ``w ← w − s_t·λ·1[u_t ⊙ (w − w_ref) ≥ 0] ⊙ (w − w_ref)``.

    Decay acts only on the coordinates where the step ``−lr_t·u_t`` also moves ``w`` toward
    ``w_ref``, so it never fights the optimizer's own direction.
    """
    d = offset(w, w_ref)
    return w - d * (u * d).ge(0) * (s * lam)


def stable(w, w_ref, s, lam, mean_vhat, eps=0.0):
    r"""Stable decay (AdamS): ``w ← w − s_t·λ·(w − w_ref) / (sqrt(mean(v̂_t)) + ε)``.

    ``mean_vhat`` is one number per model: the mean of ``v̂`` over every parameter that the
    stable form decays (Xie et al.'s code averages over all parameters of the optimizer). Their
    code has no ``ε``; decaylab adds Adam's ``ε`` so that the decay stays finite before any
    gradient arrives (``v̂ = 0``), as pytorch-optimizer's AdamS does. For SGD, pass the constant
    ``((1 − momentum)/(1 − dampening))²`` and ``ε = 0``, so that the factor becomes
    ``(1 − dampening)/(1 − momentum)`` as in SGDS.
    """
    return w - offset(w, w_ref) * (s * lam / (mean_vhat.sqrt() + eps))


def prox(z, w_ref, s, lam):
    r"""Proximal step of ``λ/2·‖w − w_ref‖²`` in the optimizer's own metric, after the step.

    ``w ← w_ref + (z − w_ref) / (1 + s_t·λ)`` with ``z = w − lr_t·u_t``. AdamW is its
    first-order Taylor expansion in ``s_t·λ``.
    """
    return z / (1 + s * lam) if w_ref is None else w_ref + (z - w_ref) / (1 + s * lam)


def prox_euclid(z, w_ref, s, lam, D):
    r"""Euclidean proximal step after an Adam step, coordinate-wise.

    ``w ← w_ref + (z − w_ref) / (1 + s_t·λ / D_t)`` with ``D_t = ε + sqrt(v̂_t)``: the proximal
    map of ``λ/2·‖w − w_ref‖²`` in the Euclidean norm while the step itself used Adam's metric.
    Not scale-free: multiplying the loss by ``c`` changes ``D_t`` and so the decay. For SGD
    ``D_t = 1`` and this equals :func:`prox`.
    """
    factor = 1 + (s * lam) / D
    return z / factor if w_ref is None else w_ref + (z - w_ref) / factor
