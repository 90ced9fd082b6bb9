r"""The named optimizers: presets of :class:`~decaylab.optim.Adam` and :class:`~decaylab.optim.SGD`.

A preset only changes defaults (no step code of its own). Each has a real signature —
``inspect.signature(AdamW)`` shows ``lr``, ``betas``, ``weight_decay`` with AdamW's defaults — and its
errors name it.
"""
from __future__ import annotations

import inspect
from typing import Any

from .directions.adam import Adam
from .directions.sgd import SGD

__all__ = ["AdamW", "ProxAdam", "EuclidProxAdam", "AdamS", "AdamC", "CautiousAdamW", "SGDW"]

# torch's flag for the form, which a preset fixes itself
_DROPPED = ("decoupled_weight_decay",)


def _preset(base: type, name: str, doc: str, **fixed: Any) -> type:
    """A class named ``name`` whose constructor is ``base``'s with the defaults in ``fixed``."""
    sig = inspect.signature(base.__init__)
    params = [p.replace(default=fixed[p.name]) if p.name in fixed else p
              for p in sig.parameters.values() if p.name not in _DROPPED]
    signature = sig.replace(parameters=params)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{name}() {exc}") from None
        bound.apply_defaults()
        base.__init__(*bound.args, **bound.kwargs)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{name}.__init__"
    __init__.__doc__ = f"{name}{str(signature).replace('(self, ', '(')}"
    return type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": "decaylab.optim"})


AdamW = _preset(
    Adam, "AdamW",
    r"""Adam with decoupled weight decay, torch's convention: ``w ← w − lr_t·λ·w − lr_t·u_t``.

    Defaults as ``torch.optim.AdamW`` (``weight_decay=0.01``); in fp32 on the CPU it is
    ``torch.optim.AdamW(fused=True)`` bit for bit. For the AdamW paper's convention, where the decay
    per step is ``η_t·λ`` and the base lr does not multiply it, pass ``decay_scale="schedule"`` and
    ``λ_paper = λ_torch · lr``.
    """,
    decay="decoupled", weight_decay=0.01,
)
ProxAdam = _preset(
    Adam, "ProxAdam",
    r"""ProxAdam (Zhuang et al., 2022): ``w ← (w − lr_t·u_t) / (1 + lr_t·λ)``; scale-free like AdamW.

    λ is torch's (lr-scaled). Zhuang et al.'s code divides by ``1 + lr_t·λ_paper/lr_0``: their λ is on
    the paper's scale, so ``ProxAdam(weight_decay=λ_paper/lr_0)`` or ``decay_scale="schedule"`` with
    their λ reproduces their runs (``docs/methods.md``).
    """,
    decay="prox", weight_decay=0.01,
)
EuclidProxAdam = _preset(
    Adam, "EuclidProxAdam",
    r"""Euclidean-proximal Adam (Schaipp's "AdamP"): ``w ← (w − lr_t·u_t) / (1 + lr_t·λ/D_t)``.

    Not to be confused with Heo et al.'s projection AdamP. Not scale-free.
    """,
    decay="prox_euclid", weight_decay=0.01,
)
AdamS = _preset(
    Adam, "AdamS",
    r"""Adam with stable weight decay (Xie et al.): ``w ← w − min(lr_t·λ/sqrt(mean v̂_t), 1)·w − lr_t·u_t``.""",
    decay="stable", weight_decay=1e-4,
)
AdamC = _preset(
    Adam, "AdamC",
    r"""AdamW with corrected decay (Defazio 2025): ``w ← w − (lr_t²/max_lr)·λ·w − lr_t·u_t``.""",
    decay="decoupled", decay_scale="corrected", weight_decay=0.01,
)
CautiousAdamW = _preset(
    Adam, "CautiousAdamW",
    r"""AdamW whose decay acts only where ``u_t`` and ``w`` agree in sign (Cautious Weight Decay).""",
    decay="cautious", weight_decay=0.01,
)
SGDW = _preset(
    SGD, "SGDW",
    r"""SGD with decoupled decay (Loshchilov & Hutter, Alg. 1): ``w ← w − s_t·λ·w − lr_t·u_t``.

    With ``decay_scale="lr"`` (default) λ is torch's. The paper's SGDW (Alg. 1) scales the gradient by
    ``η_t·α`` inside the momentum buffer (torch applies ``lr_t`` outside it) and decays by ``η_t·λ``;
    ``decay_scale="schedule"`` equals it without momentum or at a constant lr (``docs/methods.md``).
    """,
    decay="decoupled",
)
