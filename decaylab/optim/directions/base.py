"""What every direction is: the :class:`Direction` interface and the registry :data:`DIRECTIONS`.

A direction turns a gradient into ``u_t`` (the step is ``w ← w − lr_t·u_t``) and keeps its own state.
It is an object: it knows its state, its hyperparameters, its per-parameter work, whether it is
element-wise and what it can give a decay rule (``u``, ``D``, the global ``mean v̂``). Each direction
is one module of this package (its math as small pure functions, its :class:`Direction`, and its
optimizer class), registered here when the package is imported.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor


def is_number(x: Any) -> bool:
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
    * ``normalized`` — the update's size does not scale with the gradient's (Adam, Lion, Muon): the
      effective lr of a scale-invariant weight is ``lr/‖w‖``; else (SGD) ``lr/‖w‖²``.
    """

    name: ClassVar[str] = ""
    elementwise: ClassVar[bool] = True
    provides: ClassVar[frozenset[str]] = frozenset({"u"})
    statistic: ClassVar[str | None] = None
    linear: ClassVar[bool] = False
    state: ClassVar[tuple[str, ...]] = ()
    normalized: ClassVar[bool] = True

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

    def update(self, spec, g, new: dict[str, Any], hp: dict[str, Any], pp: dict[str, Any], w=None):
        """Phase 2 (pure): ``(u_t, D_t)`` from the gradient, the new state and the weights before any
        decay (``D_t = 1`` if none). ``new`` may hold values the update needs that are not state (keys
        starting with ``_``)."""
        raise NotImplementedError

    def step(self, spec, w, w_ref, u, D, new: dict[str, Any], hp: dict[str, Any], pp: dict[str, Any]):
        """Phase 2 (pure): the rule and the step, ``(w_new, state_updates)``. The default is the family's
        ``w ← after(before(w) − lr_t·u_t)``; a direction whose weights are not "w minus a step" (schedule-free:
        the weights interpolate two iterates) writes its own, and says where the rule acts."""
        rule = spec.rule
        ctx = dict(s=hp["s"], lam=hp["lam"], u=u, D=D, mean_vhat=hp.get("mean_vhat"), eps=self.rule_eps(spec))
        if rule.acts == "before":
            w = rule.apply(w, w_ref, **ctx)
        w = w - u * hp["lr"]
        if rule.acts == "after":
            w = rule.apply(w, w_ref, **ctx)
        return w, {}

    def effective_lr(self, group: dict[str, Any]) -> Any:
        """The lr of this step, ``lr_t`` (a direction with its own warmup multiplies the group's ``lr``)."""
        return group["lr"]

    def bucket_options(self, p: Tensor, stacked: bool) -> dict[str, Any]:
        """Options that depend on the parameter itself (its shape): parameters with different ones go
        to different buckets (Adafactor: factored or not)."""
        return {}

    def check_param(self, p: Tensor, stacked: bool) -> None:
        """Refuse a parameter this direction cannot optimize (raise ValueError naming it)."""

    def averages(self, group: dict[str, Any]) -> dict[str, float]:
        """The running averages' coefficients ``β`` (``x ← β·x + …``) by state key: a 16-bit state with
        round-to-nearest freezes where ``1 − β`` is below its resolution (the optimizer warns when a group is
        added; :class:`decaylab.diagnostics.DecayUnderflow` measures it)."""
        return {}

    def end_step(self, group: dict[str, Any], hp: dict[str, Any]) -> None:
        """After every bucket of the group took the step: group-level state of the direction
        (schedule-free's weight sum), from the values :meth:`hparams` computed for this step."""

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


def check_betas(group: dict[str, Any], *, one_allowed: bool = False) -> None:
    """``group["betas"]``: a pair of numbers in [0, 1) (or [0, 1]), stored as floats; ValueError naming it."""
    interval = "[0, 1]" if one_allowed else "[0, 1)"
    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (beta1, beta2) with each in {interval}; got {betas!r}")
    for i, b in enumerate(betas):
        if not is_number(b) or not (0.0 <= b <= 1.0 if one_allowed else 0.0 <= b < 1.0):
            raise ValueError(f"betas[{i}] must be a number in {interval}; got {b!r}")
    group["betas"] = (float(betas[0]), float(betas[1]))


def check_eps(group: dict[str, Any]) -> None:
    """``group["eps"]``: a finite number >= 0; ValueError naming it."""
    if not is_number(group["eps"]) or not math.isfinite(group["eps"]) or group["eps"] < 0:
        raise ValueError(f"eps must be a finite number >= 0; got {group['eps']!r}")


DIRECTIONS: dict[str, Direction] = {}
"""Every direction by name (each module of this package registers its own)."""


def register(direction: Direction) -> Direction:
    """Add ``direction`` to :data:`DIRECTIONS` under its name."""
    if not isinstance(direction, Direction) or not direction.name:
        raise ValueError(f"a direction is a named Direction instance; got {direction!r}")
    DIRECTIONS[direction.name] = direction
    return direction


def _sqrt(x):
    return math.sqrt(x) if isinstance(x, (int, float)) else x.sqrt()
