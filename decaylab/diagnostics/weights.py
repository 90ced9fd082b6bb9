r"""Instruments on the weights themselves: norms, effective learning rates, angular updates,
rotational equilibrium, the EMA timescale and decay underflow.

Definitions (``docs/methods.md`` §4). ``w`` is one parameter tensor, a param group's
tensors concatenated, or all of them concatenated ("total"); ``lr_t`` the group's learning rate
of the step just taken; ``λ_t`` its weight decay; ``s_t`` the decay scale (``s_t = lr_t`` in
torch's convention, see :func:`decaylab.diagnostics.base.step_hparams`).

==========================================  ==================================================
metric                                      definition
==========================================  ==================================================
``weight_norm/…``                           ``‖w‖₂``
``effective_lr/sgd_scale_invariant/…``      ``lr_t / ‖w‖²`` — the step size seen by the
                                            direction of a scale-invariant weight under SGD
``effective_lr/adam_norm/…``                ``lr_t / ‖w‖`` — the same for Adam, whose update
                                            size does not scale with ``‖w‖``
``effective_lr/adam_mean_inverse_sqrt_v/…`` mean over entries of ``lr_t / (sqrt(v) + ε)``, ``v``
                                            Adam's ``exp_avg_sq`` *without* bias correction —
                                            what the "Why WD" nanoGPT code logs
``angular_update/…``                        the angle (radians) between ``w_t`` and ``w_{t+1}``
``angular_update/equilibrium/group_i``      Kosson et al.'s rotational-equilibrium prediction
``ema_timescale/iterations|epochs/group_i`` ``τ_iter = 1/d``, ``τ_epoch = τ_iter·b/B``; ``d`` the
                                            per-step decay (``s_t·λ_t`` when decoupled)
``decay_underflow/rounded_fraction/…``      fraction of elements with ``|s_t·λ_t·w| < ulp(w)/2``
``decay_underflow/lost_fraction/…``         the same, 0 where the optimizer compensates
==========================================  ==================================================

Suffixes: ``total`` (all tensors), ``group_i`` (param group ``i``), ``tensor/<name>`` (one
tensor, named as in ``model.named_parameters()``). With stacked training (``ctx.stacked = K``)
every value is a tensor of shape ``(K,)``, one per model (norms over all dims but dim 0).

Cheap by construction: per-tensor norms come from one ``torch._foreach_norm`` per bucket, are
shared by the instruments of one sample (``ctx.cache``) and stay tensors; the monitor turns all
values into floats with one ``tolist()``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from decaylab.optim.sharded import global_sums, is_dtensor, local_shard

from .base import Context, Instrument, Values, step_hparams

__all__ = [
    "WeightNorm",
    "EffectiveLR",
    "AngularUpdate",
    "EMATimescale",
    "DecayUnderflow",
    "Timescale",
    "ema_timescale",
    "equilibrium_angular_update",
    "per_step_decay",
    "group_equilibrium",
    "rounded_away",
    "rotation_angle",
]

LOW_PRECISION = (torch.bfloat16, torch.float16)
EFFECTIVE_LR_KINDS = ("sgd_scale_invariant", "adam_norm", "adam_mean_inverse_sqrt_v")


# --------------------------------------------------------------------------- formulas


class Timescale(NamedTuple):
    """The EMA timescale of the weights: in optimizer steps, and in epochs when b and B are known."""

    iterations: Any
    epochs: Any | None


def ema_timescale(
    lr: Any, weight_decay: Any, *, batch_size: int | None = None, n_train: int | None = None
) -> Timescale:
    r"""Wang & Aitchison (2024): with decoupled decay the weights are an EMA of the updates with
    timescale ``τ_iter = 1/(lr·λ)`` steps, i.e. ``τ_epoch = τ_iter·b/B`` epochs (``b`` the batch
    size, ``B`` the number of training examples). Their rule: keep ``τ_epoch`` fixed when scaling
    model and data. ``lr·λ`` is torch's convention; for another decay scale pass ``lr = s_t``
    (the per-step decay is ``s_t·λ``). Works on numbers and tensors.

    >>> ema_timescale(1e-3, 0.1, batch_size=128, n_train=50_000)
    Timescale(iterations=10000.0, epochs=25.6)
    """
    tau = 1.0 / (lr * weight_decay) if not _is_zero(lr * weight_decay) else _inf_like(lr * weight_decay)
    if (batch_size is None) != (n_train is None):
        raise ValueError("batch_size and n_train: give both (for τ_epoch = τ_iter·batch_size/n_train) or neither")
    if batch_size is None:
        return Timescale(tau, None)
    if batch_size <= 0 or n_train <= 0:
        raise ValueError(f"batch_size and n_train must be positive; got batch_size={batch_size}, n_train={n_train}")
    return Timescale(tau, tau * batch_size / n_train)


def equilibrium_angular_update(decay_per_step: Any, beta: float) -> Any:
    r"""Kosson et al. (2024) rotational equilibrium: the expected angular update per step
    ``sqrt(2·d·(1 − β)/(1 + β))`` of a scale-invariant weight whose gradients behave like a random
    walk, where ``d`` is the weights' relative shrink per step and ``β`` the momentum coefficient.

    * AdamW (torch convention, ``d = lr·λ``, ``β = β₁``): ``sqrt(2·lr·λ·(1−β₁)/(1+β₁))``.
    * SGD with momentum ``μ`` and L2 in the gradient (torch's ``SGD(weight_decay=λ)``): the λw
      term passes through the momentum buffer, so ``d = lr·λ/(1−μ)`` and the formula becomes
      Kosson et al.'s ``sqrt(2·lr·λ/(1+μ))``.
    * SGD with decoupled decay (SGDW): ``d = s_t·λ``, giving ``sqrt(2·s_t·λ·(1−μ)/(1+μ))``.

    >>> round(equilibrium_angular_update(1e-2 * 0.1, 0.9), 6)  # AdamW lr=1e-2, λ=0.1, β₁=0.9
    0.01026
    """
    if isinstance(decay_per_step, Tensor):
        return (2 * decay_per_step * (1 - beta) / (1 + beta)).sqrt()
    return math.sqrt(2 * decay_per_step * (1 - beta) / (1 + beta))


def equilibrium_weight_rms(step_size: Any, decay_per_step: Any) -> Any:
    r"""Kosson et al. (2024) rotational equilibrium: the RMS per coordinate ``‖w‖/√C`` that a
    scale-invariant weight of ``C`` coordinates settles at under an Adam-type update (``step_size``
    times a step of RMS ≈ 1 per coordinate, its gradient a random walk orthogonal to ``w``), where the
    decay removes ``decay_per_step`` of the weight per step: ``step_size/sqrt(2·decay_per_step)``.

    The balance: decay takes ``2·d·‖w‖²`` of the squared norm per step, the orthogonal updates add
    ``step_size²·C``. Momentum does not change it (correlated steps add the same squared length over a
    momentum timescale); it only lowers the angle per step (:func:`equilibrium_angular_update`).
    AdamW in torch's convention (``d = lr·λ``): ``sqrt(lr/(2λ))``, Kosson et al.'s
    ``‖w‖ = sqrt(η·C/(2λ))``. ``inf`` without decay (the norm grows without bound). SGD's
    equilibrium norm depends on the gradient's norm and is not given here.

    >>> round(equilibrium_weight_rms(1e-2, 1e-2 * 0.1), 6)  # AdamW lr=1e-2, λ=0.1
    0.223607
    """
    if isinstance(decay_per_step, Tensor):
        return step_size / (2 * decay_per_step).sqrt()
    return math.inf if decay_per_step == 0 else step_size / math.sqrt(2 * decay_per_step)


def _direction(optimizer: torch.optim.Optimizer | None) -> str | None:
    """``"adam"``, ``"sgd"`` or ``None`` (unknown) for decaylab's and torch's optimizers."""
    if optimizer is None:
        return None
    direction = getattr(getattr(optimizer, "direction", None), "name", None)  # a decaylab Direction
    if direction is not None:
        return direction
    if isinstance(optimizer, torch.optim.Adam):
        return "adam"
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    return None


def _form(optimizer: torch.optim.Optimizer | None, group: dict[str, Any]) -> str | None:
    """The decay form of a group: decaylab's ``group["decay"]``, or torch's (``l2``/``decoupled``)."""
    if "decay" in group:
        return group["decay"]
    direction = _direction(optimizer)
    if direction == "adam":
        return "decoupled" if group.get("decoupled_weight_decay", False) else "l2"
    if direction == "sgd":
        return "l2"
    return None


def per_step_decay(optimizer: torch.optim.Optimizer, group: dict[str, Any], *, taken: bool = True) -> Any | None:
    r"""The relative shrink of the weights per step, ``d``, or ``None`` where there is no such number.

    ``d = s_t·λ_t`` for the forms that act on the weights (``decoupled``, ``prox``, ``cautious``,
    ``stable`` — nominal for the last two: cautious decays only where signs agree, stable divides by
    ``sqrt(mean v̂)``). For SGD with ``l2``, ``d = lr_t·λ_t·(1−δ)/(1−μ)``: the λw term runs through
    the momentum buffer (dampening δ) and in steady state is amplified by ``1/(1−μ)``. For Adam with
    ``l2`` it is ``None``: λw is divided by ``sqrt(v̂)`` like the gradient, so the shrink depends on
    the gradients. ``None`` too for ``prox_euclid`` (coordinate-wise) and unknown optimizers.
    """
    from decaylab.optim import DIRECTIONS, RULES  # diagnostics read the optimizers, never the reverse

    hp = step_hparams(group, taken=taken)
    rule, direction = RULES.get(_form(optimizer, group)), DIRECTIONS.get(_direction(optimizer))
    if rule is None:
        return None
    if rule.shrink is not None:  # exact, or nominal (a mask or a global statistic changes it)
        return hp["s"] * hp["lam"]
    if rule.acts == "gradient" and direction is not None and direction.linear:
        return hp["lr"] * hp["lam"] * (1 - group.get("dampening", 0.0)) / (1 - group.get("momentum", 0.0))
    return None


def group_equilibrium(optimizer: torch.optim.Optimizer, group: dict[str, Any], *, taken: bool = True) -> Any | None:
    r"""The rotational-equilibrium angular update predicted for a param group, or ``None``.

    Uses :func:`equilibrium_angular_update` with ``d`` from :func:`per_step_decay` and ``β = β₁``
    (Adam) or ``μ`` (SGD). Given for Adam with ``decoupled``/``prox`` decay (no amsgrad) and SGD
    with ``l2``/``decoupled``/``prox`` decay (no Nesterov); ``None`` elsewhere, where the
    derivation does not apply (Adam+L2, cautious, stable, prox_euclid, amsgrad, Nesterov).
    """
    from decaylab.optim import DIRECTIONS, RULES

    rule, direction = RULES.get(_form(optimizer, group)), DIRECTIONS.get(_direction(optimizer))
    if rule is None or direction is None:
        return None
    # the derivation needs a uniform shrink per step: an exact rule, or L2 through a linear direction
    if not (rule.shrink == "exact" or (rule.acts == "gradient" and direction.linear)):
        return None
    beta = direction.equilibrium_beta(group)
    if beta is None:
        return None
    d = per_step_decay(optimizer, group, taken=taken)
    return None if d is None else equilibrium_angular_update(d, beta)


def rotation_angle(prev_sq: Tensor, dot: Tensor, delta_sq: Tensor) -> Tensor:
    r"""The angle between ``w`` and ``w + d`` from ``‖w‖²``, ``⟨w, d⟩`` and ``‖d‖²``.

    ``θ = atan2(‖d⊥‖, ‖w‖ + ⟨w, d⟩/‖w‖)`` with ``‖d⊥‖² = ‖d‖² − ⟨w, d⟩²/‖w‖²`` the part of the
    step orthogonal to ``w``. Unlike ``acos(cos θ)``, which loses half its digits for the tiny
    angles of one optimizer step, its relative error stays near the inputs' (``⟨w, d⟩`` is a
    direct dot product, whose error is relative to ``‖w‖·‖d‖``). Sums of these inputs over
    tensors give the angle of the tensors concatenated. NaN where ``w = 0``.

    >>> w, d = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])   # from (1, 0) to (0, 1)
    >>> round(rotation_angle(w @ w, w @ d, d @ d).item(), 6)  # π/2
    1.570796
    """
    prev_sq, dot, delta_sq = prev_sq.double(), dot.double(), delta_sq.double()
    norm = prev_sq.sqrt()
    along = dot / norm
    across = (delta_sq - along * along).clamp(min=0).sqrt()
    return torch.atan2(across, norm + along)


# --------------------------------------------------------------------------- shared per-sample work


def _is_zero(x: Any) -> bool:
    return bool((x == 0).all()) if isinstance(x, Tensor) else x == 0


def _inf_like(x: Any) -> Any:
    return torch.full_like(x, math.inf, dtype=torch.float64) if isinstance(x, Tensor) else math.inf


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in LOW_PRECISION else dtype


def tensor_norms(tensors: list[Tensor], stacked: int | None = None, ord: float = 2.0) -> Tensor:
    """Norms of many tensors as one float64 tensor: shape ``(n,)``, or ``(n, K)`` when stacked.

    One ``torch._foreach_norm`` per (device, dtype) bucket (16-bit tensors accumulate in fp32);
    stacked tensors take one ``vector_norm`` over all dims but dim 0 each. Sharded tensors
    (``DTensor``, FSDP2): the norms of the whole tensors, from their local shards' norms summed
    over the mesh (:mod:`decaylab.optim.sharded`; a collective: every rank must call it).
    """
    if any(is_dtensor(t) for t in tensors):
        if ord not in (1, 2):
            raise ValueError(f"ord must be 1 or 2 for sharded (DTensor) tensors; got {ord!r}")
        local = _local_norms([local_shard(t) for t in tensors], stacked, ord)
        return global_sums(local.pow(ord), tensors).pow(1 / ord)
    return _local_norms(tensors, stacked, ord)


def _local_norms(tensors: list[Tensor], stacked: int | None, ord: float) -> Tensor:
    if not tensors:
        return torch.zeros((0, stacked) if stacked else (0,), dtype=torch.float64)
    device = tensors[0].device
    if stacked:
        return torch.stack([
            torch.linalg.vector_norm(t.detach().reshape(t.shape[0], -1), ord, dim=1, dtype=_acc_dtype(t.dtype))
            .to(device, torch.float64)
            for t in tensors
        ])
    buckets: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        buckets.setdefault((t.device, t.dtype), []).append(i)
    if len(buckets) == 1:
        ((_, dtype),) = buckets
        return torch.stack(torch._foreach_norm([t.detach() for t in tensors], ord, dtype=_acc_dtype(dtype))).double()
    out = torch.empty(len(tensors), dtype=torch.float64, device=device)
    for (_, dtype), idx in buckets.items():
        norms = torch._foreach_norm([tensors[i].detach() for i in idx], ord, dtype=_acc_dtype(dtype))
        out[torch.tensor(idx, device=device)] = torch.stack(norms).to(device, torch.float64)
    return out


class Sample:
    """What the weight instruments share within one sample (kept in ``ctx.cache["weights"]``).

    ``params``/``names``/``groups`` list every trainable tensor (the optimizer's, group by group,
    else the model's), ``group_ids`` the distinct groups in order, ``index`` each tensor's position
    in ``group_ids`` (a long tensor), ``norms`` the tensors' norms (computed on first use).
    """

    def __init__(self, ctx: Context):
        self.ctx = ctx
        if ctx.optimizer is not None:
            entries = [
                (gi, ctx.name_of(p, f"group_{gi}.param_{j}"), p)
                for gi, g in enumerate(ctx.optimizer.param_groups)
                for j, p in enumerate(g["params"])
            ]
        else:
            entries = [(None, name, p) for name, p in ctx.model.named_parameters() if p.requires_grad]
        self.groups = [g for g, _, _ in entries]
        self.names = [n for _, n, _ in entries]
        self.params = [p for _, _, p in entries]
        self.group_ids = sorted({g for g in self.groups if g is not None})
        position = {g: i for i, g in enumerate(self.group_ids)}
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.index = torch.tensor([position.get(g, 0) for g in self.groups], dtype=torch.long, device=self.device)
        self._norms: Tensor | None = None

    @classmethod
    def of(cls, ctx: Context) -> Sample:
        sample = ctx.cache.get("weights")
        if sample is None:
            sample = ctx.cache["weights"] = cls(ctx)
        return sample

    @property
    def norms(self) -> Tensor:
        if self._norms is None:
            self._norms = tensor_norms(self.params, self.ctx.stacked)
        return self._norms

    def group_sums(self, values: Tensor, dim: int = 0) -> Tensor:
        """Sums over each group's tensors along ``dim`` (the tensor axis)."""
        if len(self.group_ids) == 1:
            return values.sum(dim, keepdim=True)
        shape = list(values.shape)
        shape[dim] = len(self.group_ids)
        return values.new_zeros(shape).index_add_(dim, self.index, values)

    def group_lrs(self) -> Tensor:
        """Each group's ``lr`` as float64: ``(G,)``, or ``(G, K)`` when stacked."""
        lrs = [self.ctx.optimizer.param_groups[g]["lr"] for g in self.group_ids]
        k = self.ctx.stacked
        if not k and not any(isinstance(lr, Tensor) for lr in lrs):
            return torch.tensor([float(lr) for lr in lrs], dtype=torch.float64, device=self.device)
        rows = [torch.as_tensor(lr, dtype=torch.float64).to(self.device) for lr in lrs]
        return torch.stack([r.expand(k) if k else r.reshape(()) for r in rows])


# --------------------------------------------------------------------------- instruments


class WeightNorm(Instrument):
    r"""``‖w‖₂``: total, per param group (``group_i``) and per tensor (``tensor/<name>``).

    Example:
        >>> import torch
        >>> from decaylab.diagnostics.base import Context
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad(): _ = model.weight.copy_(torch.tensor([[3.0, 4.0]]))
        >>> WeightNorm().measure(Context(model, None, step=0))["weight_norm/total"].item()
        5.0
    """

    name = "weight_norm"

    def __init__(self, interval: int = 1, *, per_group: bool = True, per_tensor: bool = True):
        super().__init__(interval)
        self.per_group, self.per_tensor = per_group, per_tensor

    @torch.no_grad()
    def measure(self, ctx: Context) -> Mapping[str, Any]:
        s = Sample.of(ctx)
        if not s.params:
            return {}
        sq = s.norms * s.norms
        parts, names = [sq.sum(0, keepdim=True)], ["weight_norm/total"]
        if self.per_group and s.group_ids:
            parts.append(s.group_sums(sq))
            names += [f"weight_norm/group_{g}" for g in s.group_ids]
        values = torch.cat(parts).sqrt()
        if self.per_tensor:
            values = torch.cat([values, s.norms])
            names += [f"weight_norm/tensor/{n}" for n in s.names]
        return Values(names, values)


class EffectiveLR(Instrument):
    r"""Effective learning rates, per param group and per tensor (``lr_t`` of the step just taken).

    * ``effective_lr/sgd_scale_invariant``: ``lr_t / ‖w‖²``. For a scale-invariant weight
      (followed by a normalization) SGD moves the direction ``w/‖w‖`` as if with this lr.
    * ``effective_lr/adam_norm``: ``lr_t / ‖w‖``. Adam's update has a size independent of
      ``‖w‖``, so its rotation per step scales with this.
    * ``effective_lr/adam_mean_inverse_sqrt_v``: the mean over all entries of
      ``lr_t / (sqrt(v) + ε)`` with ``v = exp_avg_sq`` *not* bias-corrected, exactly as the "Why
      WD" nanoGPT code logs it (``avg_adam_elr``); also ``total``, the mean over the entries of
      every group (each with its own ``lr_t`` and ``ε``). Only for groups with Adam state.

    There is no ``total`` for the first two: ``lr_t`` may differ between groups.
    ``kinds`` selects among :data:`EFFECTIVE_LR_KINDS` (default: all).
    """

    name = "effective_lr"

    def __init__(self, interval: int = 1, *, kinds: tuple[str, ...] | None = None, per_tensor: bool = True):
        super().__init__(interval)
        kinds = EFFECTIVE_LR_KINDS if kinds is None else tuple(kinds)
        bad = [k for k in kinds if k not in EFFECTIVE_LR_KINDS]
        if bad or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {EFFECTIVE_LR_KINDS}; got {kinds!r}")
        self.kinds, self.per_tensor = kinds, per_tensor

    def attach(self, ctx: Context) -> None:
        if ctx.optimizer is None:
            raise ValueError("EffectiveLR reads each group's lr: it needs an optimizer")
        if self.kinds == ("adam_mean_inverse_sqrt_v",) and not any("eps" in g for g in ctx.optimizer.param_groups):
            raise ValueError(
                "kinds=('adam_mean_inverse_sqrt_v',) reads Adam's exp_avg_sq and eps, and this optimizer "
                f"({type(ctx.optimizer).__name__}) is not an Adam"
            )

    @torch.no_grad()
    def measure(self, ctx: Context) -> Mapping[str, Any]:
        s = Sample.of(ctx)
        if not s.params:
            return {}
        norms, lr_group = s.norms, s.group_lrs()
        names: list[str] = []
        parts: list[Tensor] = []
        if "sgd_scale_invariant" in self.kinds or "adam_norm" in self.kinds:
            sq = [s.group_sums(norms * norms)]  # columns: groups, then tensors
            lrs = [lr_group]
            scopes = [f"group_{g}" for g in s.group_ids]
            if self.per_tensor:
                sq.append(norms * norms)
                lrs.append(lr_group[s.index])
                scopes += [f"tensor/{n}" for n in s.names]
            sq, lrs = torch.cat(sq), torch.cat(lrs)
            if "sgd_scale_invariant" in self.kinds:
                parts.append(lrs / sq)
                names += [f"effective_lr/sgd_scale_invariant/{scope}" for scope in scopes]
            if "adam_norm" in self.kinds:
                parts.append(lrs / sq.sqrt())
                names += [f"effective_lr/adam_norm/{scope}" for scope in scopes]
        if "adam_mean_inverse_sqrt_v" in self.kinds:
            more_names, more = self._mean_inverse_sqrt_v(ctx)
            parts += more
            names += more_names
        return Values(names, torch.cat(parts)) if parts else {}

    def _mean_inverse_sqrt_v(self, ctx: Context) -> tuple[list[str], list[Tensor]]:
        state, k = ctx.optimizer.state, ctx.stacked
        names: list[str] = []
        parts: list[Tensor] = []
        total_sum = total_count = None
        for gi, group in enumerate(ctx.optimizer.param_groups):
            if "eps" not in group:
                continue
            items = [(j, p, state[p]["exp_avg_sq"]) for j, p in enumerate(group["params"])
                     if p in state and "exp_avg_sq" in state[p]]
            if not items:
                continue
            raw = [v for _, _, v in items]  # DTensors (FSDP2): sums over local shards, completed below
            vs = [local_shard(v) for v in raw]
            vs = [v.float() if v.dtype in LOW_PRECISION else v for v in vs]
            inv = torch._foreach_sqrt(vs)
            torch._foreach_add_(inv, group["eps"])
            torch._foreach_reciprocal_(inv)
            if k:
                sums = torch.stack([t.reshape(k, -1).sum(1, dtype=torch.float64) for t in inv])
                counts = torch.tensor([t[0].numel() for t in vs], dtype=torch.float64, device=sums.device)[:, None]
            else:
                sums = torch.stack(torch._foreach_norm(inv, 1)).double()  # entries are positive: L1 = sum
                sums = global_sums(sums, raw)
                counts = torch.tensor([t.numel() for t in raw], dtype=torch.float64, device=sums.device)
            lr = group["lr"]
            weighted = sums * (lr.to(sums.device, torch.float64) if isinstance(lr, Tensor) else lr)
            group_sum, group_count = weighted.sum(0, keepdim=True), counts.sum(0, keepdim=True)
            parts.append(group_sum / group_count)
            names.append(f"effective_lr/adam_mean_inverse_sqrt_v/group_{gi}")
            if self.per_tensor:
                parts.append(weighted / counts)
                names += [f"effective_lr/adam_mean_inverse_sqrt_v/tensor/{ctx.name_of(p, f'group_{gi}.param_{j}')}"
                          for j, p, _ in items]
            total_sum = group_sum if total_sum is None else total_sum + group_sum
            total_count = group_count if total_count is None else total_count + group_count
        if total_sum is not None:
            parts.append(total_sum / total_count)
            names.append("effective_lr/adam_mean_inverse_sqrt_v/total")
        return names, parts


class AngularUpdate(Instrument):
    r"""The angle (radians) between the weights before and after the sampled step.

    ``angular_update/total`` (all tensors as one vector), ``…/group_i``, ``…/tensor/<name>``; and
    ``angular_update/equilibrium/group_i``, Kosson et al.'s prediction for the group (see
    :func:`group_equilibrium`; given only where its derivation applies). The angle is computed from
    ``‖w_t‖²``, ``⟨w_t, w_{t+1} − w_t⟩`` and ``‖w_{t+1} − w_t‖²`` by :func:`rotation_angle`,
    accurate even for the tiny angles of one step.

    About the prediction: it holds at equilibrium for *scale-invariant* weights (a normalization
    follows them, so the loss ignores ``‖w‖`` and the gradient is orthogonal to ``w``) whose
    gradients behave like a random walk (batch noise dominates), with many coordinates, after
    several ``1/d`` steps at a constant lr. It is written for torch's λ convention through the
    per-step decay ``d`` (:func:`per_step_decay`): AdamW with ``decay_scale="lr"`` gives
    ``sqrt(2·lr·λ·(1−β₁)/(1+β₁))``; for other decay scales ``lr·λ`` is replaced by ``s_t·λ``.
    Torch's ``SGD(momentum=μ, weight_decay=λ)`` gives ``sqrt(2·lr·λ/(1+μ))``; SGDW (decoupled)
    ``sqrt(2·lr·λ·(1−μ)/(1+μ))``.
    """

    name = "angular_update"
    needs_previous = True

    def __init__(self, interval: int = 1, *, per_group: bool = True, per_tensor: bool = True,
                 equilibrium: bool = True):
        super().__init__(interval)
        self.per_group, self.per_tensor, self.equilibrium = per_group, per_tensor, equilibrium

    @torch.no_grad()
    def measure(self, ctx: Context) -> Mapping[str, Any]:
        s = Sample.of(ctx)
        if not s.params:
            return {}
        try:
            prev = [ctx.previous[id(p)] for p in s.params]
        except KeyError:
            raise ValueError(
                "AngularUpdate needs the weights before the step (ctx.previous); attach it through a Monitor, "
                "which snapshots them before each sampled step"
            ) from None
        # The angle between w_{t+1} and w_t = w_{t+1} − d is measured from the side of w_{t+1},
        # whose norms the sample already has: rows ‖w_{t+1}‖², ⟨w_{t+1}, −d⟩, ‖d‖²; columns tensors.
        k = ctx.stacked
        # Sharded parameters (DTensor): the monitor snapshots local shards; sums over them are
        # completed over the mesh below (s.norms already are).
        current = [local_shard(p.detach()) for p in s.params]
        current = [c.float() if c.dtype in LOW_PRECISION else c for c in current]
        if any(p.dtype in LOW_PRECISION for p in s.params):
            diffs = [c - q.float() for c, q in zip(current, prev, strict=True)]
        else:
            diffs = list(torch._foreach_sub(current, prev))
        dots = [(c * d).reshape(k, -1).sum(1) if k else torch.vdot(c.reshape(-1), d.reshape(-1))
                for c, d in zip(current, diffs, strict=True)]
        norms, delta_norms = s.norms, tensor_norms(diffs, k)
        dots, delta_sq = torch.stack(dots).to(norms), delta_norms * delta_norms
        if any(is_dtensor(p) for p in s.params):
            dots, delta_sq = global_sums(torch.stack([dots, delta_sq], 1), s.params).unbind(1)
        rows = torch.stack([norms * norms, -dots, delta_sq])
        parts, names = [rows.sum(1, keepdim=True)], ["angular_update/total"]
        if self.per_group and s.group_ids:
            parts.append(s.group_sums(rows, dim=1))
            names += [f"angular_update/group_{g}" for g in s.group_ids]
        if self.per_tensor:
            parts.append(rows)
            names += [f"angular_update/tensor/{n}" for n in s.names]
        extra: dict[str, Any] = {}
        if ctx.optimizer is not None and self.equilibrium:
            for gi, group in enumerate(ctx.optimizer.param_groups):
                pred = group_equilibrium(ctx.optimizer, group, taken=True)
                if pred is not None:
                    extra[f"angular_update/equilibrium/group_{gi}"] = pred
        return Values(names, rotation_angle(*torch.cat(parts, 1).unbind(0)), extra)


class EMATimescale(Instrument):
    r"""The weights' EMA timescale per param group: ``τ_iter = 1/d`` steps and, when
    ``batch_size`` and ``n_train`` are given, ``τ_epoch = τ_iter·batch_size/n_train`` epochs.

    ``d`` is the per-step decay of :func:`per_step_decay` (``lr_t·λ_t`` for torch's AdamW,
    ``s_t·λ_t`` for other decay scales), so this follows lr and λ schedules. Groups without a
    per-step decay (Adam with L2) are skipped; ``inf`` where ``d = 0``.
    Metrics: ``ema_timescale/iterations/group_i``, ``ema_timescale/epochs/group_i``.
    """

    name = "ema_timescale"

    def __init__(self, interval: int = 1, *, batch_size: int | None = None, n_train: int | None = None):
        super().__init__(interval)
        ema_timescale(1.0, 1.0, batch_size=batch_size, n_train=n_train)  # validates the pair
        self.batch_size, self.n_train = batch_size, n_train

    def attach(self, ctx: Context) -> None:
        if ctx.optimizer is None or all(per_step_decay(ctx.optimizer, g) is None for g in ctx.optimizer.param_groups):
            raise ValueError(
                "EMATimescale needs a param group whose decay shrinks the weights by a known factor per step "
                "(decoupled/prox/cautious/stable forms, torch's AdamW, or SGD); Adam with L2 decay has none"
            )

    def measure(self, ctx: Context) -> Mapping[str, Any]:
        out: dict[str, Any] = {}
        for gi, group in enumerate(ctx.optimizer.param_groups):
            d = per_step_decay(ctx.optimizer, group, taken=True)
            if d is None:
                continue
            tau = ema_timescale(d, 1.0, batch_size=self.batch_size, n_train=self.n_train)
            out[f"ema_timescale/iterations/group_{gi}"] = tau.iterations
            if tau.epochs is not None:
                out[f"ema_timescale/epochs/group_{gi}"] = tau.epochs
        return out


# --------------------------------------------------------------------------- decay underflow


def _format(dtype: torch.dtype) -> tuple[int, int]:
    """``(p, e_tiny)``: significand bits (with the implicit one) and ``frexp``'s exponent of the
    smallest normal number."""
    info = torch.finfo(dtype)
    return round(1 - math.log2(info.eps)), round(math.log2(info.tiny)) + 1


def rounded_away(w: Tensor, decay: Any) -> Tensor:
    r"""Elementwise: is the decay ``decay·w`` below half an ulp of ``w`` in ``w``'s dtype?

    ``w ≠ 0`` and ``|decay·w| < ulp(w)/2``, where ``ulp(w)`` is the spacing of ``w``'s dtype just
    below ``|w|`` (the direction decay moves it): ``2^(max(e, e_tiny) − p)`` with
    ``(m, e) = frexp(w)``, ``p`` the dtype's significand bits (``1 − log2(finfo.eps)``) and
    ``e_tiny`` the exponent of ``finfo.tiny``, halved at exact powers of two above ``tiny``. Then
    ``w·(1 − decay)`` rounds back to ``w`` under round-to-nearest. ``decay`` is a number, or a
    ``(K,)`` tensor for ``w`` stacking ``K`` models along dim 0. Computed in float64.

    >>> rounded_away(torch.tensor([1.0, 1.5, 0.0], dtype=torch.bfloat16), 1e-4).tolist()
    [True, True, False]
    """
    p, e_tiny = _format(w.dtype)
    x = w.detach().double()
    if isinstance(decay, Tensor) and decay.dim() == 1:
        decay = decay.to(x.device, torch.float64).view(-1, *([1] * (x.dim() - 1)))
    m, e = torch.frexp(x)
    power_of_two = (m.abs() == 0.5) & (e > e_tiny)
    half_spacing = torch.ldexp(torch.ones_like(x), e.clamp(min=e_tiny) - (p + 1) - power_of_two.int())
    return (x * decay).abs().lt(half_spacing) & x.ne(0)


def _count_rounded_away(ws: list[Tensor], decay: float) -> Tensor:
    """Counts of :func:`rounded_away` elements per tensor of one dtype (unstacked, scalar decay).

    Skips the elementwise test where the dtype decides it: normal numbers all round away when
    ``decay < 2^-(p+1)`` and none do when ``decay ≥ 2^-p``; then only zeros (excluded) and
    subnormals below ``c = 2^(e_tiny−p−1)/decay`` need counting, found via the minimum ``|w|``.
    """
    p, e_tiny = _format(ws[0].dtype)
    if decay < 2.0 ** -(p + 1):
        # every nonzero element (counted in fp32 at least: bf16 cannot hold counts above 256 exactly)
        return torch.stack(torch._foreach_norm(ws, 0, dtype=_acc_dtype(ws[0].dtype))).double()
    if decay >= 2.0**-p:
        c = 2.0 ** (e_tiny - p - 1) / decay
        counts = torch.zeros(len(ws), dtype=torch.float64, device=ws[0].device)
        flat = torch.cat([w.reshape(-1) for w in ws])  # empty for a rank whose shards are all empty
        if flat.numel() and float(flat.abs_().amin()) < c:  # zeros or tiny entries somewhere
            for i, w in enumerate(ws):
                counts[i] = rounded_away(w, decay).sum()
        return counts
    return torch.stack([rounded_away(w, decay).sum(dtype=torch.float64) for w in ws])


class DecayUnderflow(Instrument):
    r"""The fraction of elements whose decay rounds away in their dtype on the step just taken.

    ``decay_underflow/rounded_fraction/{group_i,total}``: the fraction of a group's elements
    with ``|s_t·λ_t·w| < ulp(w)/2`` (:func:`rounded_away`, on the weights after the step), with
    ``s_t·λ_t`` as the optimizer applies it (:func:`~decaylab.diagnostics.base.step_hparams`;
    torch's optimizers: ``s_t = lr_t``). For such elements ``w·(1 − s_t·λ_t)`` rounds back to
    ``w``: the decay is lost in a plain round-to-nearest write (bf16 with ``lr·λ = 1e-4``: all of
    them near 1; fp32 only below ``lr·λ ≈ 6e-8``).

    ``decay_underflow/lost_fraction/…``: the same, but 0 for groups whose 16-bit parameters the
    optimizer writes with compensation (decaylab's ``low_precision="kahan"``, ``"stochastic"`` or
    ``"exact"``), where the decay accumulates even though each step rounds it away.

    ``decay_underflow/frozen_state/{key}/group_i``: the state too. For a decaylab optimizer whose running
    averages are kept in 16 bits with round-to-nearest (``state_dtype=torch.bfloat16``), the fraction of
    the elements of each average (``exp_avg_sq``, …) where ``β·x`` rounds back to ``x``: an average that
    cannot decay (Adam's ``v`` with ``β₂ = 0.999`` in bf16).

    Groups with decay in the gradient (``l2``, torch's ``Adam``/``SGD``) and groups with
    ``λ_t = 0`` are skipped: there is no decay applied to the weights to lose. For
    ``decay="stable"`` the nominal ``s_t·λ_t`` is used (the form further divides it by
    ``sqrt(mean v̂)``). A stacked model with ``s_t·λ_t = 0`` counts 0.
    """

    name = "decay_underflow"

    def attach(self, ctx: Context) -> None:
        if ctx.optimizer is None:
            raise ValueError("DecayUnderflow reads each group's lr and weight decay: it needs an optimizer")

    @torch.no_grad()
    def measure(self, ctx: Context) -> Mapping[str, Any]:
        out: dict[str, Any] = {}
        totals = {"rounded": 0, "lost": 0, "count": 0}
        for gi, group in enumerate(ctx.optimizer.param_groups):
            if _form(ctx.optimizer, group) == "l2" or not group["params"]:
                continue
            hp = step_hparams(group, taken=True)
            decay = hp["s"] * hp["lam"]
            if _is_zero(decay):
                continue
            rounded, lost, count = self._group_counts(ctx, group, decay)
            out[f"decay_underflow/rounded_fraction/group_{gi}"] = rounded / count
            out[f"decay_underflow/lost_fraction/group_{gi}"] = lost / count
            totals["rounded"] = totals["rounded"] + rounded
            totals["lost"] = totals["lost"] + lost
            totals["count"] = totals["count"] + count
        if isinstance(totals["count"], Tensor):
            out["decay_underflow/rounded_fraction/total"] = totals["rounded"] / totals["count"]
            out["decay_underflow/lost_fraction/total"] = totals["lost"] / totals["count"]
        out.update(self._frozen_state(ctx))
        return out

    def _frozen_state(self, ctx: Context) -> dict[str, Any]:
        """``decay_underflow/frozen_state/{key}/group_i``: the fraction of a running average's elements that
        cannot move, where ``β·x`` rounds back to ``x`` in the state's 16-bit dtype (round-to-nearest)."""
        out: dict[str, Any] = {}
        direction_of = getattr(ctx.optimizer, "direction_of", None)
        if direction_of is None:
            return out
        for gi, group in enumerate(ctx.optimizer.param_groups):
            if group.get("state_rounding", "nearest") != "nearest":
                continue
            for key, beta in direction_of(group).averages(group).items():
                frozen, count = 0, 0
                for p in group["params"]:
                    x = ctx.optimizer.state.get(p, {}).get(key)
                    if isinstance(x, Tensor) and x.dtype in LOW_PRECISION:
                        x = local_shard(x)
                        frozen += int(rounded_away(x, 1 - beta).sum())
                        count += x.numel()
                if count:
                    out[f"decay_underflow/frozen_state/{key}/group_{gi}"] = frozen / count
        return out

    def _group_counts(self, ctx: Context, group: dict[str, Any], decay: Any) -> tuple[Tensor, Tensor, Tensor]:
        compensated = group.get("low_precision", "none") in ("kahan", "stochastic", "exact")
        buckets: dict[tuple, list[Tensor]] = {}
        for p in group["params"]:
            buckets.setdefault((p.device, p.dtype), []).append(p.detach())
        device = group["params"][0].device
        rounded = lost = count = None
        for (_, dtype), whole in buckets.items():
            ws = [local_shard(w) for w in whole]  # DTensors (FSDP2): count on shards, sum below
            if ctx.stacked:
                d = torch.as_tensor(decay, dtype=torch.float64).expand(ctx.stacked)
                c = torch.stack([rounded_away(w, d).reshape(ctx.stacked, -1).sum(1, dtype=torch.float64) for w in ws])
                n = torch.full((ctx.stacked,), float(sum(w[0].numel() for w in ws)), dtype=torch.float64)
            else:
                c = global_sums(_count_rounded_away(ws, float(decay)), whole)
                n = torch.tensor(float(sum(w.numel() for w in whole)), dtype=torch.float64)
            c, n = c.sum(0).to(device), n.to(device)
            lost_c = torch.zeros_like(c) if compensated and dtype in LOW_PRECISION else c
            rounded = c if rounded is None else rounded + c
            lost = lost_c if lost is None else lost + lost_c
            count = n if count is None else count + n
        return rounded, lost, count
