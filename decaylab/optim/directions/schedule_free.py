r"""Schedule-free AdamW (Defazio et al. 2024, "The Road Less Scheduled"; pip ``schedulefree``), as a direction and
an optimizer.

Three sequences: ``z`` takes Adam-normalized gradient steps, ``x`` is a weighted average of the ``z``'s,
and the gradient is taken at their interpolation ``y = (1 − β₁)·z + β₁·x``. The parameters hold ``y``
while training (``optimizer.train()``) and ``x`` for evaluation (``optimizer.eval()``). At step ``k``
(0-based), with ``η_k = lr·min(1, (k+1)/warmup_steps)``::

    v = β₂·v + (1 − β₂)·g²,  D = sqrt(v / (1 − β₂^(k+1))) + ε,  ĝ = g / D
    c = w_k / Σ_{i≤k} w_i,   w_k = (k+1)^r · (max_{i≤k} η_i)^weight_lr_power
    z' = z − η_k·ĝ,          y' = (1 − c)·y + c·z − η_k·(1 − β₁(1 − c))·ĝ

Where the decay acts (``decay_at``):

- ``"y"`` (the ``schedulefree`` package's ``weight_decay``, and the default): the rule's pull is taken
  at ``y``, ``δ = y − before(y)`` (for decoupled decay ``η_k·λ·y``), and enters like the gradient
  step: ``z' = z − η_k·ĝ − δ``, ``y' = (1 − c)·y + c·z − (1 − β₁(1 − c))·(η_k·ĝ + δ)``. Rules that act
  before the step (and ``l2``, through ``g``).
- ``"z"``: the rule acts on the iterate that takes the steps, ``z' = after(before(z) − η_k·ĝ)``, and
  ``y`` follows its definition, ``y' = (1 − c)·(y − (1 − β₁)·z) + (1 − β₁(1 − c))·z'``. Every rule.

It gives a rule ``u = ĝ`` and ``D`` (not ``mean v̂``: the stable form is refused); ``decay_scale="lr"``
uses ``η_k``. Element-wise.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .. import rules, torch_compat
from ..optimizer import DecayOptimizer
from .base import Direction, check_betas, check_eps, is_number, register

DECAY_AT = ("y", "z")


def _maximum(a, b):
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return torch.maximum(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64))
    return max(a, b)


class ScheduleFreeDirection(Direction):
    r"""Schedule-free AdamW's step (see the module docstring). State: ``z``, ``exp_avg_sq``; the group
    keeps the package's running ``sf_weight_sum`` and ``sf_lr_max``, and ``train_mode``."""

    name = "schedule_free"
    provides = frozenset({"u", "D"})
    state = ("z", "exp_avg_sq")

    def validate(self, group):
        check_betas(group)
        if group["betas"][0] == 0:
            raise ValueError("betas[0] must be > 0 for schedule-free AdamW (eval() divides by it)")
        check_eps(group)
        warmup = group["warmup_steps"]
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
            raise ValueError(f"warmup_steps must be an int >= 0; got {warmup!r}")
        for key in ("r", "weight_lr_power"):
            if not is_number(group[key]) or not math.isfinite(group[key]) or group[key] < 0:
                raise ValueError(f"{key} must be a finite number >= 0; got {group[key]!r}")
        if group["decay_at"] not in DECAY_AT:
            raise ValueError(f"decay_at must be one of {DECAY_AT}; got {group['decay_at']!r}")
        rule = rules.resolve(group["decay"])
        if group["decay_at"] == "y" and rule.acts == "after":
            raise ValueError(
                f"decay_at='y' takes the pull of a rule that acts before the step, and decay={rule.name!r} acts "
                "after it (a proximal map): use decay_at='z'"
            )
        group.setdefault("sf_weight_sum", 0.0)
        group.setdefault("sf_lr_max", -1.0)
        group.setdefault("train_mode", False)

    def options(self, group):
        return {"eps": float(group["eps"]), "decay_at": group["decay_at"]}

    def init_state(self, p, state, spec):
        if "z" in state:
            return False
        state["z"] = p.detach().to(spec.state_dtype, copy=True)  # an iterate: kept at the state's precision
        state["exp_avg_sq"] = torch.zeros_like(p, dtype=spec.state_dtype, memory_format=torch.preserve_format)
        return True

    def effective_lr(self, group):
        k, warmup = group["step"], group["warmup_steps"]
        return group["lr"] * ((k + 1) / warmup if k < warmup else 1.0)

    def hparams(self, group):
        if not group["train_mode"]:
            raise RuntimeError(
                "ScheduleFreeAdamW.step() in eval mode: call optimizer.train() before training steps (and "
                "optimizer.eval() before evaluating the model or saving it)"
            )
        beta1, beta2 = group["betas"]
        k = group["step"]
        lr = self.effective_lr(group)
        lr_max = _maximum(lr, group["sf_lr_max"])
        weight = (k + 1) ** group["r"] * lr_max ** group["weight_lr_power"]
        weight_sum = group["sf_weight_sum"] + weight
        if isinstance(weight_sum, Tensor):
            ckp1 = torch.where(weight_sum > 0, weight / weight_sum.clamp(min=torch.finfo(weight_sum.dtype).tiny),
                               torch.zeros_like(weight_sum))
        else:
            ckp1 = weight / weight_sum if weight_sum else 0.0
        return {"beta1": beta1, "beta2": beta2, "ckp1": ckp1, "bias_correction2": 1 - beta2 ** (k + 1),
                "sf_lr_max": lr_max, "sf_weight_sum": weight_sum}

    def averages(self, group):
        return {"exp_avg_sq": group["betas"][1]}

    def end_step(self, group, hp):
        group["sf_lr_max"], group["sf_weight_sum"] = hp["sf_lr_max"], hp["sf_weight_sum"]

    def moments(self, spec, g, st, hp, pp):
        v = st["exp_avg_sq"] * hp["beta2"] + g * g * (1 - hp["beta2"])
        return {"exp_avg_sq": v, "_z": st["z"]}

    def update(self, spec, g, new, hp, pp, w=None):
        D = (new["exp_avg_sq"] / hp["bias_correction2"]).sqrt() + spec.eps
        return g / D, D

    def step(self, spec, w, w_ref, u, D, new, hp, pp):
        rule = spec.rule
        beta1, c, lr = hp["beta1"], hp["ckp1"], hp["lr"]
        z = new["_z"]
        ctx = dict(s=hp["s"], lam=hp["lam"], u=u, D=D, mean_vhat=hp.get("mean_vhat"), eps=self.rule_eps(spec))
        step = u * lr
        if spec.decay_at == "y":
            if rule.acts == "before":
                step = step + (w - rule.apply(w, w_ref, **ctx))  # the pull δ at y, taken like the gradient step
            z_new = z - step
            y_new = w.lerp(z, c) + step * (beta1 * (1 - c) - 1)
            return y_new, {"z": z_new}
        if rule.acts == "before":
            z = rule.apply(z, w_ref, **ctx)
        z_new = z - step
        if rule.acts == "after":
            z_new = rule.apply(z_new, w_ref, **ctx)
        y_new = (w - new["_z"] * (1 - beta1)) * (1 - c) + z_new * (1 - beta1 * (1 - c))
        return y_new, {"z": z_new}

    def rule_eps(self, spec):
        return spec.eps


SCHEDULE_FREE = register(ScheduleFreeDirection())


class ScheduleFreeAdamW(DecayOptimizer):
    r"""Schedule-free AdamW with any decay rule; by default the ``schedulefree`` package's ``AdamWScheduleFree``.

    ``ScheduleFreeAdamW(params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, warmup_steps=0,
    r=0.0, weight_lr_power=2.0, *, decay="decoupled", decay_at="y", ...)``: the package's arguments and
    its result (tested in float64). Call ``optimizer.train()`` before training steps and
    ``optimizer.eval()`` before evaluating or saving the model (the parameters then hold the average
    ``x``), as with the package; no lr schedule is needed (the optimizer's ``warmup_steps`` warms up).

    Example:
        >>> import torch
        >>> from decaylab.optim import ScheduleFreeAdamW
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> opt = ScheduleFreeAdamW([w], lr=0.1, weight_decay=0.5)
        >>> opt.train(); w.grad = torch.zeros(2); opt.step(); opt.eval()
        >>> round(w[0].item(), 4)  # pure decay at y: z and x move by lr·λ·y = 0.05
        0.95
    """

    direction = SCHEDULE_FREE

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | Tensor | Callable[[int], float] = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        *,
        decay: str | rules.DecayRule = "decoupled",
        decay_at: str = "y",
        decay_scale: str = "lr",
        max_lr: float | Tensor | None = None,
        decay_to: str = "zero",
        maximize: bool = False,
        backend: str = "auto",
        low_precision: str = "kahan",
        state_dtype: torch.dtype | None = None,
        state_rounding: str = "nearest",
        foreach: bool | None = None,
    ):
        backend = torch_compat.backend_from_torch_flags(type(self).__name__, backend, foreach=foreach)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, warmup_steps=warmup_steps, r=r,
                        weight_lr_power=weight_lr_power, decay=decay, decay_at=decay_at, decay_scale=decay_scale,
                        decay_to=decay_to, maximize=maximize, backend=backend, low_precision=low_precision)
        defaults.update(state_dtype=state_dtype, state_rounding=state_rounding)
        defaults[torch_compat.MAX_LR] = max_lr
        super().__init__(params, defaults)

    @torch.no_grad()
    def eval(self) -> None:
        """Parameters ← ``x`` (the average): for evaluating and saving the model."""
        self._swap(to_train=False)

    @torch.no_grad()
    def train(self) -> None:
        """Parameters ← ``y`` (where gradients are taken): before training steps."""
        self._swap(to_train=True)

    def _swap(self, to_train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == to_train:
                continue
            beta1 = group["betas"][0]
            for p in group["params"]:
                z = self.state.get(p, {}).get("z")
                if z is not None:
                    # y = (1 − β₁)z + β₁x: x → y is lerp(x, z, 1 − β₁), y → x is lerp(y, z, 1 − 1/β₁)
                    p.lerp_(z.to(p.device), 1 - beta1 if to_train else 1 - 1 / beta1)
            group["train_mode"] = to_train
