r"""Decay rules: where the decay acts (*form*), how strong one step is (*scale*), what it pulls toward.

A decay rule is an object (:class:`DecayRule`) held in one registry, :data:`RULES`, by name. It
carries its equation (its docstring), where it acts (:attr:`~DecayRule.acts`: into the gradient,
before the step, after the step), what it needs from the direction (:attr:`~DecayRule.needs`: the
update ``u``, Adam's denominator ``D``, the global ``mean v̂``), its properties (scale-free or not,
what its per-step shrink is) and its reference implementation (:meth:`~DecayRule.gradient` /
:meth:`~DecayRule.apply`). Its optional *lowerings* tell the fast executors how to run it: the
constants that fold it into torch's fused Adam kernels (:meth:`~DecayRule.fused`), and its loop in
decaylab's C step (:attr:`~DecayRule.native`). A rule without lowerings still runs everywhere the
reference runs (the reference, foreach and compiled executors): write a subclass in your own code and
pass it as ``decay=`` (see the README).

Every function here is pure and small and works on a single tensor *or* on a
:class:`~decaylab.optim.tensorlist.TensorList` (the foreach path), because it uses only
arithmetic operators and a few methods both share. Hyperparameters (``s``, ``lam``, ``D``)
are tensors that broadcast against the weights: 0-dim for one model, shape ``(K, 1, ..., 1)``
for ``K`` models stacked along dim 0.

Notation (``docs/methods.md``): ``w`` weights, ``w_ref`` the decay target (``None`` for zero),
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

from typing import Any, ClassVar

import torch

SCALES = ("lr", "schedule", "corrected", "constant")
TARGETS = ("zero", "init")
# Where a rule acts: into the gradient before the direction's moments, on the weights before the
# step (a pull toward w_ref), or on the weights after the step (a proximal map).
PLACES = ("gradient", "before", "after")
# What a rule may need from the direction: its update u_t, its per-coordinate metric D_t (Adam's
# ε + sqrt(v̂); 1 for SGD), and the global mean of v̂ over every parameter the rule decays.
NEEDS = ("u", "D", "mean_vhat")


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


# --------------------------------------------------------------------------- the forms as functions


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


def stable_strength(s, lam, mean_vhat, eps=0.0):
    r"""The stable form's shrink per step, ``min(s_t·λ / (sqrt(mean v̂_t) + ε), 1)``.

    The minimum keeps the decay from flipping a weight's sign or growing it where the mean of
    ``v̂`` is (near) zero: with no gradient yet, ``s_t·λ/ε`` would be huge (``lr = 1e-3``,
    ``λ = 1e-4``, ``ε = 1e-8`` give 10, and ``w → −9·w``). At most, the decay takes ``w`` to ``w_ref``.
    """
    strength = s * lam / (mean_vhat.sqrt() + eps)
    return min(strength, 1.0) if isinstance(strength, (int, float)) else strength.clamp_max(1.0)


def stable(w, w_ref, s, lam, mean_vhat, eps=0.0):
    r"""Stable decay (AdamS): ``w ← w − min(s_t·λ / (sqrt(mean(v̂_t)) + ε), 1)·(w − w_ref)``.

    ``mean_vhat`` is one number per model: the mean of ``v̂`` over every parameter that the
    stable form decays (Xie et al.'s code averages over all parameters of the optimizer). Their
    code has no ``ε``; decaylab adds Adam's ``ε`` so that the decay stays finite before any
    gradient arrives (``v̂ = 0``), as pytorch-optimizer's AdamS does, and caps the shrink at 1
    (:func:`stable_strength`). For SGD, pass the constant ``((1 − momentum)/(1 − dampening))²``
    and ``ε = 0``, so that the factor becomes ``(1 − dampening)/(1 − momentum)`` as in SGDS.
    """
    return w - offset(w, w_ref) * stable_strength(s, lam, mean_vhat, eps)


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


def _shrink_(w, strength) -> None:
    """In place on a list of tensors: ``w ← w − strength·w`` (as :func:`decoupled` rounds it)."""
    if all(isinstance(x, float) for x in strength) and len(set(strength)) == 1:
        torch._foreach_add_(w, w, alpha=-strength[0])
    else:
        torch._foreach_sub_(w, torch._foreach_mul(w, strength))


# --------------------------------------------------------------------------- rules as objects


class DecayRule:
    r"""A decay rule: subclass it, set the class attributes, write :meth:`apply` (or :meth:`gradient`).

    Class attributes (the rule's properties; the optimizer, the executors, the diagnostics and the
    tests read them, never a list of names):

    * ``name`` — what ``decay=`` and param groups call it.
    * ``acts`` — ``"gradient"`` (:meth:`gradient` adds to ``g`` before the direction's moments),
      ``"before"`` (:meth:`apply` maps ``w`` before the step ``w − lr_t·u_t``) or ``"after"``
      (:meth:`apply` maps ``z = w − lr_t·u_t``).
    * ``needs`` — what :meth:`apply` reads besides ``s`` and ``λ``: ``"u"``, ``"D"``, ``"mean_vhat"``
      (a direction that cannot give one refuses the rule with a message naming both).
    * ``scales`` — the ``decay_scale`` values that mean something for it (``None``: all).
    * ``scale_free`` — with Adam, are the iterates unchanged when the loss is multiplied by ``c > 0``
      (exactly for ``ε = 0``)? (Zhuang et al. 2022.)
    * ``shrink`` — what one step does to ``w − w_ref`` when the update is zero: ``"exact"`` (every
      coordinate by the same factor, fixed by ``s_t·λ``: :meth:`shrink_factor`), ``"nominal"``
      (``s_t·λ`` is the nominal strength, but a mask or a global statistic changes it per
      coordinate or per step), or ``None`` (no such number: it depends on the gradients).
    * ``native`` — the rule's number in ``_native.c``'s ``FORM_*`` enum, or ``None`` when the C step
      does not have it (a test checks the two agree).

    Rules are stateless and compared by identity; one instance per name lives in :data:`RULES`.
    """

    name: ClassVar[str] = ""
    acts: ClassVar[str] = "before"
    needs: ClassVar[frozenset[str]] = frozenset()
    scales: ClassVar[tuple[str, ...] | None] = None
    scale_free: ClassVar[bool] = False
    shrink: ClassVar[str | None] = None
    native: ClassVar[int | None] = None

    # ------------------------------------------------------------------ the reference implementation

    def gradient(self, g, w, w_ref, lam):
        """``acts == "gradient"``: the gradient the direction sees."""
        raise TypeError(f"decay rule {self.name!r} acts {self.acts!r}, not on the gradient")

    def apply(self, w, w_ref, *, s, lam, u=None, D=None, mean_vhat=None, eps=0.0):
        """``acts == "before"``: the decayed ``w`` before the step; ``"after"``: the decayed ``z = w − lr_t·u_t``."""
        raise TypeError(f"decay rule {self.name!r} acts {self.acts!r}: it has no apply()")

    def strength(self, s, lam, mean_vhat=None, eps=0.0):
        """The rule's scalar strength per step (per model): ``s_t·λ`` unless the rule says otherwise.

        The lowerings below take it: the fused constants and the native step's decay constant.
        """
        return s * lam

    # ------------------------------------------------------------------ optional lowerings

    def fused(self, lr: float, s: float, lam: float, strength: float) -> tuple[str, float, float] | None:
        """How torch's fused Adam kernels run this rule: ``(kernel, lr', weight_decay')`` with
        ``kernel`` ``"adam"`` (``torch._fused_adam_``, L2 in the gradient) or ``"adamw"``
        (``torch._fused_adamw_``: ``w·(1 − lr'·wd') − lr'·u``), for ``lr > 0``, from the step's
        ``lr_t``, ``s_t``, ``λ`` and :meth:`strength`; ``None`` when the kernels cannot express the rule."""
        return None

    # apply_(w, *, strength, u=None, D=None): the in-place lowering the foreach executor runs, on lists
    # of tensors; ``strength`` holds one value per tensor (a float, or a tensor that broadcasts). None:
    # the foreach executor runs :meth:`apply` on TensorLists instead (correct, with more temporaries).
    apply_ = None

    def native_constant(self, strength: float) -> float:
        """The decay constant ``_native.c`` reads per model (its ``dec[k]``) from :meth:`strength`."""
        return strength

    # ------------------------------------------------------------------ properties

    def shrink_factor(self, strength: float) -> float:
        """``shrink == "exact"``: the factor on ``w − w_ref`` of one step with a zero update."""
        raise TypeError(f"decay rule {self.name!r} has no exact per-step shrink (shrink={self.shrink!r})")

    def __repr__(self) -> str:
        return f"<decay rule {self.name!r}>"


class L2(DecayRule):
    r"""``l2``: coupled L2, ``g ← g + λ·(w − w_ref)`` before the direction's moments.

    The λw term goes through the direction like the gradient: through Adam's ``m`` *and* ``v``
    (Loshchilov & Hutter: this couples λ to the lr and ties the good region to a diagonal), through
    SGD's momentum buffer. ``λ`` is torch's ``Adam(weight_decay=λ)`` / ``SGD(weight_decay=λ)``;
    ``decay_scale`` does not apply (it is ``"lr"``: the L2 term is scaled like the gradient).
    """

    name = "l2"
    acts = "gradient"
    scales = ("lr",)
    native = 0

    def gradient(self, g, w, w_ref, lam):
        return l2_gradient(g, w, w_ref, lam)

    def strength(self, s, lam, mean_vhat=None, eps=0.0):
        return lam

    def fused(self, lr, s, lam, strength):
        return ("adam", lr, strength)


class Decoupled(DecayRule):
    r"""``decoupled``: ``w ← w − s_t·λ·(w − w_ref)``, then the step (torch's ``AdamW``, SGDW)."""

    name = "decoupled"
    acts = "before"
    scale_free = True
    shrink = "exact"
    native = 1

    def apply(self, w, w_ref, *, s, lam, u=None, D=None, mean_vhat=None, eps=0.0):
        return decoupled(w, w_ref, s, lam)

    def apply_(self, w, *, strength, u=None, D=None):
        _shrink_(w, strength)

    def fused(self, lr, s, lam, strength):
        # (s/lr)·λ, not s·λ/lr: with decay_scale="lr" it is λ itself, and the step is torch's AdamW bit for bit
        return ("adamw", lr, (s / lr) * lam)

    def shrink_factor(self, strength):
        return 1.0 - strength


class Prox(DecayRule):
    r"""``prox`` (ProxAdam, Zhuang et al. 2022): ``w ← w_ref + (w − lr_t·u_t − w_ref)/(1 + s_t·λ)``.

    The exact proximal step of ``λ/2·‖w − w_ref‖²`` in the optimizer's own metric; AdamW is its
    first-order Taylor expansion. Scale-free like AdamW.
    """

    name = "prox"
    acts = "after"
    scale_free = True
    shrink = "exact"
    native = 2

    def apply(self, w, w_ref, *, s, lam, u=None, D=None, mean_vhat=None, eps=0.0):
        return prox(w, w_ref, s, lam)

    def apply_(self, w, *, strength, u=None, D=None):
        torch._foreach_div_(w, [1 + x for x in strength])

    def fused(self, lr, s, lam, strength):
        # (w − lr·u)/(1 + d) = w·(1 − lr'·wd') − lr'·u with lr' = lr/(1 + d), wd' = d/lr
        return ("adamw", lr / (1 + strength), strength / lr)

    def native_constant(self, strength):
        return 1 + strength

    def shrink_factor(self, strength):
        return 1.0 / (1.0 + strength)


class ProxEuclid(DecayRule):
    r"""``prox_euclid`` (Schaipp's "AdamP"): ``w ← w_ref + (w − lr_t·u_t − w_ref)/(1 + s_t·λ/D_t)``.

    The Euclidean proximal map after a step taken in Adam's metric, coordinate-wise; not scale-free.
    Not Heo et al.'s projection AdamP. For SGD (``D = 1``) it is ``prox``.
    """

    name = "prox_euclid"
    acts = "after"
    needs = frozenset({"D"})
    native = 3

    def apply(self, w, w_ref, *, s, lam, u=None, D=None, mean_vhat=None, eps=0.0):
        return prox_euclid(w, w_ref, s, lam, D)

    def apply_(self, w, *, strength, u=None, D=None):
        if D is None:  # D = 1 (SGD): the plain prox
            torch._foreach_div_(w, [1 + x for x in strength])
            return
        factor = torch._foreach_reciprocal(D)
        torch._foreach_mul_(factor, strength)
        torch._foreach_add_(factor, 1)
        torch._foreach_div_(w, factor)


class Cautious(DecayRule):
    r"""``cautious`` (Cautious Weight Decay, Alg. 1): decoupled decay only where ``u_t·(w − w_ref) ≥ 0``."""

    name = "cautious"
    acts = "before"
    needs = frozenset({"u"})
    scale_free = True
    shrink = "nominal"
    native = 4

    def apply(self, w, w_ref, *, s, lam, u=None, D=None, mean_vhat=None, eps=0.0):
        return cautious(w, w_ref, u, s, lam)

    def apply_(self, w, *, strength, u=None, D=None):
        mask = torch._foreach_mul(u, w)  # 1[u·w ≥ 0] = min(sign(u·w) + 1, 1)
        torch._foreach_sign_(mask)
        torch._foreach_add_(mask, 1)
        torch._foreach_clamp_max_(mask, 1)
        if all(isinstance(x, float) for x in strength):
            torch._foreach_addcmul_(w, mask, w, [-x for x in strength])  # w − s·λ·mask·w in one pass
        else:
            torch._foreach_mul_(mask, w)
            torch._foreach_mul_(mask, strength)
            torch._foreach_sub_(w, mask)


class Stable(DecayRule):
    r"""``stable`` (AdamS / SGDS, Xie et al.): ``w ← w − min(s_t·λ/(sqrt(mean v̂_t) + ε), 1)·(w − w_ref)``.

    ``mean v̂`` is one number per model over every parameter the rule decays (a global statistic:
    it needs every gradient of the step before any weight moves). For SGD it is the constant
    ``((1 − μ)/(1 − δ))²`` with ``ε = 0``. So one NaN in one gradient makes ``mean v̂`` NaN, and every
    weight this rule decays becomes NaN at that step (Adam's own update only spreads it within the
    tensor); with K stacked models the mean is one per model, and only that model's weights do.
    """

    name = "stable"
    acts = "before"
    needs = frozenset({"mean_vhat"})
    shrink = "nominal"
    native = 5

    def apply(self, w, w_ref, *, s, lam, u=None, D=None, mean_vhat=None, eps=0.0):
        return stable(w, w_ref, s, lam, mean_vhat, eps)

    def apply_(self, w, *, strength, u=None, D=None):
        _shrink_(w, strength)

    def strength(self, s, lam, mean_vhat=None, eps=0.0):
        return stable_strength(s, lam, mean_vhat, eps)

    def fused(self, lr, s, lam, strength):
        return ("adamw", lr, strength / lr)


RULES: dict[str, DecayRule] = {}
"""Every decay rule by name: the built-in forms, then any rule registered or passed as ``decay=``."""


def register(rule: DecayRule | type[DecayRule]) -> DecayRule:
    """Add ``rule`` (an instance, or a class to instantiate) to :data:`RULES` under its name.

    Registering again under a built-in name is an error; a user rule registered again (a notebook
    cell run twice) replaces the earlier one. Returns the registered instance, so it also works as
    a class decorator.
    """
    if isinstance(rule, type):
        rule = rule()
    if not isinstance(rule, DecayRule):
        raise TypeError(f"decay rules are DecayRule instances; got {rule!r}")
    name = rule.name
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a decay rule needs a name that is an identifier; got {name!r}")
    if rule.acts not in PLACES:
        raise ValueError(f"decay rule {name!r}: acts must be one of {PLACES}; got {rule.acts!r}")
    unknown = set(rule.needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"decay rule {name!r}: needs must be a subset of {NEEDS}; got {sorted(unknown)}")
    existing = RULES.get(name)
    if existing is not None and existing is not rule and name in FORMS:
        raise ValueError(f"decay rule {name!r} is built in; give your rule another name")
    RULES[name] = rule
    return rule


def resolve(decay: Any) -> DecayRule:
    """The rule for ``decay=``: a registered name, or a :class:`DecayRule` (registered on first use)."""
    if isinstance(decay, DecayRule):
        return decay if RULES.get(decay.name) is decay else register(decay)
    rule = RULES.get(decay) if isinstance(decay, str) else None
    if rule is None:
        raise ValueError(f"decay must be one of {', '.join(repr(n) for n in RULES)}, or a DecayRule; got {decay!r}")
    return rule


for _cls in (L2, Decoupled, Prox, ProxEuclid, Cautious, Stable):
    RULES[_cls.name] = _cls()
FORMS: tuple[str, ...] = tuple(RULES)
"""The built-in forms, in ``_native.c``'s order; :data:`RULES` also holds rules users register."""
del _cls
