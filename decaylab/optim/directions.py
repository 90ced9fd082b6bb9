r"""Update directions: the part of an optimizer that does not know about weight decay.

A direction turns a gradient into ``u_t`` (the step is ``w ← w − lr_t·u_t``) and keeps its
own state. It is an object (:class:`Direction`) in one registry, :data:`DIRECTIONS`: it knows its
state, its hyperparameters, its per-parameter work, whether it is element-wise and what it can give
a decay rule (``u``, ``D``, the global ``mean v̂``). The math is in small pure functions that work
on a tensor or a :class:`TensorList` alike; the objects compose them.

Adam (Kingma & Ba; torch's conventions)::

    m_t = m_{t−1} + (1 − β₁)·(g_t − m_{t−1})  (torch: m.lerp_(g, 1 − β₁))
    v_t = β₂·v_{t−1} + (1 − β₂)·g_t²
    v_max = max(v_max, v_t)                  (amsgrad; v̂ uses v_max)
    D_t = sqrt(v_t) / sqrt(1 − β₂^t) + ε     (= ε + sqrt(v̂_t))
    u_t = m_t / (1 − β₁^t) / D_t

SGD with momentum μ, dampening δ (torch's conventions; the buffer starts as g on the first step)::

    b_t = μ·b_{t−1} + (1 − δ)·g_t            (b_1 = g_1)
    u_t = g_t + μ·b_t (nesterov) or b_t      (u_t = g_t without momentum)
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor


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


def _sqrt(x):
    return math.sqrt(x) if isinstance(x, (int, float)) else x.sqrt()


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


def sgd_momentum(g, buf, keep, gain):
    """New momentum buffer ``keep·b + gain·g``: ``(0, 1)`` on the first step, ``(μ, 1 − δ)`` after."""
    return buf * keep + g * gain


def sgd_direction(g, buf, momentum, nesterov):
    """``u_t``: the gradient, the buffer, or Nesterov's ``g + μ·b``."""
    if buf is None:
        return g
    return g + buf * momentum if nesterov else buf


# --------------------------------------------------------------------------- directions as objects


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def step_dtype() -> torch.dtype:
    """The dtype of torch's per-parameter step counts (float32, or float64 under a float64 default)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class Direction:
    """An update direction: subclass it and write the methods; register an instance in :data:`DIRECTIONS`.

    Class attributes:

    * ``name`` — as in ``BucketSpec.direction.name`` and the optimizers' ``direction``.
    * ``elementwise`` — the update of each coordinate reads only that coordinate (the executors that
      flatten or shard tensors need it).
    * ``provides`` — what a decay rule may need that this direction can give (``"u"``, ``"D"``,
      ``"mean_vhat"``; see :mod:`decaylab.optim.rules`).
    * ``statistic`` — how ``mean_vhat`` is made: ``"sum"`` (summed over every decayed tensor after
      the moments, before any update: the optimizer runs the step in two phases), ``"constant"``
      (known before the step: :meth:`mean_vhat`), or ``None``.
    * ``linear`` — ``u_t`` is linear in the gradients, so coupled L2's ``λ·w`` reaches the weights
      unchanged up to the momentum's gain (SGD), rather than rescaled per coordinate (Adam).
    * ``state`` — the state keys, as ``torch.optim`` names them.
    """

    name: ClassVar[str] = ""
    elementwise: ClassVar[bool] = True
    provides: ClassVar[frozenset[str]] = frozenset({"u"})
    statistic: ClassVar[str | None] = None
    linear: ClassVar[bool] = False
    state: ClassVar[tuple[str, ...]] = ()

    def validate(self, group: dict[str, Any]) -> None:
        """Check the direction's own keys of a param group (raise ValueError naming the key)."""

    def options(self, group: dict[str, Any]) -> dict[str, Any]:
        """What is fixed for a bucket (hashable values): part of its spec, so of its compiled graph."""
        return {}

    def state_keys(self, spec) -> tuple[str, ...]:
        """The state this direction keeps for a bucket with ``spec``."""
        return self.state

    def init_state(self, p: Tensor, state: dict[str, Any], spec) -> bool:
        """Create the state of ``p`` if missing; True when it was created now (the first step)."""
        return False

    def state_shape(self, key: str, p: Tensor) -> tuple[int, ...] | None:
        """The shape state ``key`` must have for parameter ``p`` (checked when a state dict loads);
        None for a key this direction does not check."""
        return () if key == "step" else tuple(p.shape)

    def hparams(self, group: dict[str, Any]) -> dict[str, Any]:
        """Per-step scalars of a group beyond ``lr``, ``lam``, ``s`` (e.g. Adam's betas)."""
        return {}

    def prepare(self, group: dict[str, Any], spec, params: list[Tensor], states: list[dict[str, Any]],
                fresh: list[bool], tensor: Callable[[Any], Tensor]) -> dict[str, list[Tensor]]:
        """Per-tensor values of this step (``pp``), e.g. bias corrections; advances step counts.

        ``tensor(x)`` makes a number a 0-dim tensor of the bucket's compute dtype and device (cached).
        """
        return {}

    def moments(self, spec, g, st: dict[str, Any], hp: dict[str, Any], pp: dict[str, Any]) -> dict[str, Any]:
        """Phase 1 (pure): the new state after gradient ``g`` (compute dtype), as a dict of state keys."""
        return {}

    def update(self, spec, g, new: dict[str, Any], hp: dict[str, Any], pp: dict[str, Any]):
        """Phase 2 (pure): ``(u_t, D_t)`` from the gradient and the new state (``D_t = 1`` if none)."""
        raise NotImplementedError

    # Optional in-place lowerings for the foreach executor, on lists of tensors (None: it runs
    # moments/update on TensorLists instead). foreach_moments_(bucket, g) updates the state in place;
    # foreach_update_(bucket, g, strength, lr) applies the rule (its apply_) and the step to the parameters,
    # with ``strength`` and ``lr`` one value per tensor (floats, or tensors that broadcast).
    foreach_moments_ = None
    foreach_update_ = None

    def vhat_sum(self, spec, new: dict[str, Any], pp: dict[str, Any]):
        """``statistic == "sum"``: the sum of ``v̂`` over one tensor (one per model when stacked)."""
        raise TypeError(f"direction {self.name!r} has no summed statistic")

    def mean_vhat(self, group: dict[str, Any]) -> float:
        """``statistic == "constant"``: the value that stands in for ``mean v̂``."""
        raise TypeError(f"direction {self.name!r} has no constant statistic")

    def rule_eps(self, spec) -> float:
        """The ``ε`` a rule adds to ``sqrt(mean v̂)`` (Adam's own; 0 where the statistic is exact)."""
        return 0.0

    def equilibrium_beta(self, group: dict[str, Any]) -> float | None:
        """The momentum ``β`` of the rotational-equilibrium prediction (Kosson et al. 2024), or None where
        the derivation does not apply to this direction with this group's options."""
        return None

    def check_rule(self, rule) -> None:
        """Refuse a rule that needs what this direction cannot give."""
        missing = sorted(set(rule.needs) - set(self.provides))
        if missing:
            raise ValueError(
                f"decay={rule.name!r} needs {', '.join(missing)} from the direction, which {self.name} does not "
                f"have (it gives {', '.join(sorted(self.provides)) or 'nothing'}); choose another decay form"
            )

    def __repr__(self) -> str:
        return f"<direction {self.name!r}>"


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
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2) with each in [0, 1); got {betas!r}")
        for i, b in enumerate(betas):
            if not _is_number(b) or not 0.0 <= b < 1.0:
                raise ValueError(f"betas[{i}] must be a number in [0, 1); got {b!r}")
        if not _is_number(group["eps"]) or not math.isfinite(group["eps"]) or group["eps"] < 0:
            raise ValueError(f"eps must be a finite number >= 0; got {group['eps']!r}")
        group["betas"] = (float(betas[0]), float(betas[1]))

    def options(self, group):
        return {"eps": float(group["eps"]), "amsgrad": bool(group["amsgrad"])}

    def state_keys(self, spec):
        return self.state + (("max_exp_avg_sq",) if spec.amsgrad else ())

    def init_state(self, p, state, spec):
        created = "exp_avg" not in state
        if created:
            state["step"] = torch.tensor(0.0, dtype=step_dtype())
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if spec.amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
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

    def update(self, spec, g, new, hp, pp):
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
    state = ("momentum_buffer",)

    def validate(self, group):
        momentum, dampening = group["momentum"], group["dampening"]
        if not _is_number(momentum) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1); got {momentum!r}")
        if not _is_number(dampening) or not 0 <= dampening <= 1:
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
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
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

    def update(self, spec, g, new, hp, pp):
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

    def equilibrium_beta(self, group):
        return None if group.get("nesterov", False) else group.get("momentum", 0.0)


DIRECTIONS: dict[str, Direction] = {d.name: d for d in (AdamDirection(), SGDDirection())}
"""Every direction by name."""
