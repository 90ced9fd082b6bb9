r"""The optimizer family: a direction (Adam, SGD) × a decay rule (form, scale, target, schedule).

:class:`Adam` and :class:`SGD` take the decay rule as keyword arguments; the named optimizers
(:class:`AdamW`, :class:`ProxAdam`, :class:`SGDW`, …) are presets that only change defaults.
Param groups, ``state_dict`` and lr schedulers work as in ``torch.optim``; a checkpoint of
``torch.optim.AdamW`` loads into :class:`AdamW` and continues identically, and the other way
round (for the forms torch has: ``l2`` and ``decoupled`` with ``decay_scale="lr"``).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from . import directions, kernels, native, precision, rules, sharded
from .kernels import Spec

__all__ = [
    "DecayOptimizer",
    "Adam",
    "SGD",
    "AdamW",
    "ProxAdam",
    "EuclidProxAdam",
    "AdamS",
    "AdamC",
    "CautiousAdamW",
    "SGDW",
    "DecayUnderflowWarning",
]


class DecayUnderflowWarning(UserWarning):
    """Weight decay rounds away: ``s_t·λ`` is below the parameters' dtype resolution."""


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_hparam(name: str, value: Any, *, allow_callable: bool = False, upper: float | None = None) -> None:
    """A non-negative number, or a tensor of shape () or (K,) of non-negative numbers."""
    allowed = "a number >= 0" + (f" and < {upper}" if upper is not None else "")
    allowed += ", a tensor of shape () or (K,) of such numbers"
    if allow_callable:
        allowed += ", or a schedule (a callable step -> value)"
    if allow_callable and callable(value) and not isinstance(value, Tensor):
        return
    if isinstance(value, Tensor):
        if value.dim() > 1 or not value.is_floating_point():
            raise ValueError(
                f"{name} must be {allowed}; got a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
            )
        bad = (value < 0) | ~torch.isfinite(value)
        if upper is not None:
            bad |= value >= upper
        if bool(bad.any()):
            raise ValueError(f"{name} must be {allowed}; got {value.tolist()}")
        return
    if not _is_number(value) or not math.isfinite(value) or value < 0 or (upper is not None and value >= upper):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")


def _is_zero(x: Any) -> bool:
    return bool((x == 0).any()) if isinstance(x, Tensor) else x == 0


class DecayOptimizer(torch.optim.Optimizer):
    """Base of the family: validation, state, buckets, backends. Subclasses name a direction.

    Param-group keys shared by every direction (each may differ per group):

    * ``weight_decay`` — λ: a number, a tensor of shape ``(K,)`` (one per stacked model), or a
      schedule ``step -> λ_t`` (see :mod:`decaylab.schedules`) called with the 0-based index of
      the step being taken.
    * ``decay`` — the form: ``"l2"``, ``"decoupled"``, ``"prox"``, ``"prox_euclid"``,
      ``"cautious"``, ``"stable"`` (equations in :mod:`decaylab.optim.rules`).
    * ``decay_scale`` — ``s_t``: ``"lr"`` (torch), ``"schedule"`` (the AdamW paper),
      ``"corrected"`` (AdamC), ``"constant"``. ``"schedule"``/``"corrected"`` divide by
      ``max_lr``, which defaults to the group's lr when the optimizer is built.
    * ``decay_to`` — ``"zero"`` or ``"init"`` (decay toward the weights at construction, L2-SP).
    * ``backend`` — ``"auto"``, ``"reference"``, ``"foreach"``, ``"compiled"``, ``"fused"``
      (torch's fused Adam kernels, for the rules they express exactly; :mod:`decaylab.optim.kernels`),
      ``"native"`` (decaylab's own C step for every form, K stacked models in one call;
      :mod:`decaylab.optim.native`; also SGD). On CPU fp32/fp64 ``"auto"`` takes ``"fused"`` for one
      Adam model's ``l2``, ``decoupled`` and ``prox``, ``"native"`` for the other Adam forms, for SGD
      and for stacked models, else ``"compiled"`` for buckets of at least 2²⁰ elements and
      ``"foreach"`` below.
    * ``low_precision`` — ``"kahan"`` (default), ``"stochastic"`` or ``"none"``, for bf16/fp16
      parameters (see :mod:`decaylab.optim.precision`).

    ``lr`` and ``weight_decay`` may be tensors of shape ``(K,)`` when every parameter of the
    group stacks ``K`` models along dim 0: model ``k`` then trains with ``lr[k]`` and ``λ[k]``.
    """

    direction: str = ""
    _direction_keys: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]):
        self._underflow_reported: set[tuple[int, torch.dtype]] = set()
        self._compile_failed = False
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ groups and validation

    def _validate_direction(self, group: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._validate_group(group)
        except ValueError:
            self.param_groups.pop()
            raise
        if group["decay_to"] == "init":
            for p in group["params"]:
                self.state[p]["init_param"] = p.detach().clone(memory_format=torch.preserve_format)

    def _validate_group(self, group: dict[str, Any]) -> None:
        _check_hparam("lr", group["lr"])
        _check_hparam("weight_decay", group["weight_decay"], allow_callable=True)
        _choice("decay", group["decay"], rules.FORMS)
        _choice("decay_scale", group["decay_scale"], rules.SCALES)
        _choice("decay_to", group["decay_to"], rules.TARGETS)
        _choice("backend", group["backend"], kernels.BACKENDS)
        _choice("low_precision", group["low_precision"], precision.MODES)
        if group["decay"] == "l2" and group["decay_scale"] != "lr":
            raise ValueError(
                f"decay_scale={group['decay_scale']!r} has no effect with decay='l2': the L2 term enters the "
                "gradient and is scaled like it. Use decay_scale='lr' with 'l2', or a decoupled/proximal decay form."
            )
        if group["low_precision"] == "stochastic" and any(p.dtype == torch.float16 for p in group["params"]):
            raise ValueError(
                "low_precision='stochastic' rounds to bf16 only; for float16 parameters use 'kahan' or 'none'"
            )
        self._validate_direction(group)
        for p in group["params"]:
            if p.is_complex():
                raise ValueError("params: complex parameters are not supported; optimize torch.view_as_real(p) instead")
        self._resolve_max_lr(group)
        self._check_stacked(group)
        if group["backend"] == "fused":
            self._check_fused(group)
        if group["backend"] == "native":
            self._check_native(group)
        group.setdefault("step", 0)

    def _check_fused(self, group: dict[str, Any]) -> None:
        stacked = any(isinstance(group[k], Tensor) and group[k].dim() == 1 for k in ("lr", "weight_decay"))
        for p in group["params"]:
            why = kernels.fusable_spec(self._spec(group, p, stacked)) or kernels.fusable_tensor(p)
            if why:
                raise ValueError(
                    f"backend='fused' cannot run this param group: {why}. It runs torch's fused Adam kernels for "
                    f"decay in {kernels.FUSED_FORMS} toward zero (stable: one model) on CPU fp32/fp64 tensors; use "
                    "backend='auto' (it picks 'fused' wherever it can) or 'compiled'"
                )

    def _check_native(self, group: dict[str, Any]) -> None:
        stacked = any(isinstance(group[k], Tensor) and group[k].dim() == 1 for k in ("lr", "weight_decay"))
        for p in group["params"]:
            why = kernels.nativable_spec(self._spec(group, p, stacked)) or kernels.fusable_tensor(p)
            if why is None and not native.available():
                why = native.why_not()
            if why:
                raise ValueError(
                    f"backend='native' cannot run this param group: {why}. It runs decaylab's C loop for Adam and "
                    "SGD with every decay form toward zero on CPU fp32/fp64 tensors; use backend='auto' (it picks "
                    "'native' wherever it can) or 'compiled'"
                )

    def _resolve_max_lr(self, group: dict[str, Any]) -> None:
        if group.get("max_lr") is None:
            peak = group.get("initial_lr", group["lr"])
            # A copy: torch's schedulers update a tensor lr in place, and the peak must not follow.
            group["max_lr"] = peak.detach().clone() if isinstance(peak, Tensor) else peak
        else:
            _check_hparam("max_lr", group["max_lr"])
        if group["decay_scale"] in ("schedule", "corrected") and _is_zero(group["max_lr"]):
            raise ValueError(
                f"max_lr: decay_scale={group['decay_scale']!r} divides by the peak learning rate, which defaults to "
                "the group's lr when the optimizer is built, and that lr is 0 (a warmup from 0?). "
                "Pass max_lr=<peak lr> (> 0)."
            )

    def _check_stacked(self, group: dict[str, Any]) -> None:
        sizes = {k: v.numel() for k in ("lr", "weight_decay", "max_lr")
                 if isinstance(v := group.get(k), Tensor) and v.dim() == 1}
        if not sizes:
            return
        ks = set(sizes.values())
        if len(ks) > 1:
            raise ValueError(
                f"lr, weight_decay and max_lr must have the same length K when given per model; got {sizes}"
            )
        (k,) = ks
        for p in group["params"]:
            if p.dim() == 0 or p.shape[0] != k:
                raise ValueError(
                    f"params: with per-model hyperparameters of length {k} every parameter must stack {k} models along "
                    f"dim 0; got a parameter of shape {tuple(p.shape)}"
                )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            # A torch.optim.Adam/AdamW checkpoint says which form it used.
            if "decay" not in group and "decoupled_weight_decay" in group and self.direction == "adam":
                group["decay"] = "decoupled" if group["decoupled_weight_decay"] else "l2"
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            if group.get("max_lr") is None:
                group["max_lr"] = group.get("initial_lr", group["lr"])
            for p in group["params"]:
                st = self.state.get(p, {})
                if "step" in st and not isinstance(st["step"], Tensor):  # checkpoints before torch 1.12
                    st["step"] = torch.tensor(float(st["step"]), dtype=_step_dtype())
            # Weight-decay schedules read the group's step. A torch checkpoint has none, and one that
            # went through torch.optim kept a stale one: the parameters' own counts are the truth.
            steps = [int(self.state[p]["step"]) for p in group["params"] if "step" in self.state.get(p, {})]
            group["step"] = max([group.get("step", 0), *steps])
        self._underflow_reported = set()
        self._compile_failed = False

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        if self.direction == "adam":
            for group in sd["param_groups"]:
                # torch.optim.Adam reads this key; it makes a decaylab checkpoint mean the same there.
                group["decoupled_weight_decay"] = group["decay"] == "decoupled"
        return sd

    # ------------------------------------------------------------------ the step

    def _init_state(self, p: Tensor, group: dict[str, Any], spec: Spec) -> dict[str, Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract

    def _spec(self, group: dict[str, Any], p: Tensor, stacked: bool) -> Spec:
        raise NotImplementedError  # pragma: no cover - abstract

    def _per_param(self, group: dict[str, Any], spec: Spec, params: list[Tensor], fresh: list[bool], device,
                   dtype) -> dict[str, list[Tensor]]:
        raise NotImplementedError  # pragma: no cover - abstract

    def _group_hparams(self, group: dict[str, Any]) -> dict[str, Any]:
        """``lr``, ``lam`` and ``s`` for this step of the group (floats or tensors)."""
        wd = group["weight_decay"]
        lam = wd(group["step"]) if callable(wd) and not isinstance(wd, Tensor) else wd
        if callable(wd) and not isinstance(wd, Tensor):
            _check_hparam("weight_decay (the value its schedule returned)", lam)
        lr = group["lr"]
        return {"lr": lr, "lam": lam, "s": rules.decay_scale(group["decay_scale"], lr, group["max_lr"])}

    def _hp_tensor(self, value: Any, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``value`` as a tensor of ``dtype`` on ``device``; a number's tensor is made once and reused.

        A compiled step takes its hyperparameters as tensors; making them anew on every step costs a
        host-to-device copy each on a GPU. The cache holds the last few values of every number.
        """
        if isinstance(value, Tensor):
            return value.to(device=device, dtype=dtype)
        cache = self.__dict__.setdefault("_hp_cache", {})
        key = (float(value), device, dtype)
        tensor = cache.get(key)
        if tensor is None:
            if len(cache) >= 1024:  # a schedule moves the lr every step: keep the cache small
                cache.clear()
            tensor = cache[key] = torch.tensor(float(value), dtype=dtype, device=device)
        return tensor

    def _check_underflow(self, index: int, group: dict[str, Any], dtype: torch.dtype, spec: Spec,
                         hp: dict[str, Any]) -> None:
        # l2 acts through the gradient; prox_euclid and stable scale s_t·λ by 1/D_t and 1/sqrt(mean v̂),
        # which only the kernel knows: the check here would misjudge them.
        if spec.form in ("l2", "prox_euclid", "stable") or (index, dtype) in self._underflow_reported:
            return
        # With tensor hyperparameters (K stacked models, or a tensor lr) the check reads them back,
        # a device sync on a GPU: judge every 64th step only.
        if group["step"] % 64 and any(isinstance(hp[k], Tensor) for k in ("lr", "lam", "s")):
            return
        if dtype in precision.LOW_PRECISION and spec.low_precision != "none":
            return
        # Judge the bulk of training only: at the tail of an annealed schedule (lr_t < max_lr/10)
        # the step itself vanishes, and a decay below resolution there costs nothing.
        if group["decay_scale"] != "constant":
            lr, max_lr = hp["lr"], group["max_lr"]
            if bool(torch.as_tensor(lr < max_lr / 10).all()):
                return
        strength = hp["s"] * hp["lam"]
        if isinstance(strength, Tensor):
            strength = strength[strength > 0].min().item() if bool((strength > 0).any()) else 0.0
        if 0 < strength < precision.resolution(dtype):
            self._underflow_reported.add((index, dtype))
            cure = (
                "use low_precision='kahan' or 'stochastic'" if dtype in precision.LOW_PRECISION
                else "keep a higher-precision copy of these weights, or raise lr·λ"
            )
            warnings.warn(
                f"weight decay rounds away in param group {index}: the decay per step s_t·λ = {strength:.3g} "
                f"(decay={group['decay']!r}, decay_scale={group['decay_scale']!r}) is below {dtype}'s resolution "
                f"{precision.resolution(dtype):.3g}, so w·(1 − s_t·λ) rounds back to w: "
                f"{'no weight' if strength < precision.resolution(dtype) / 2 else 'many weights'} of this group "
                f"{'is' if strength < precision.resolution(dtype) / 2 else 'are not'} decayed; {cure}. "
                "(Reported once per group and dtype.)",
                DecayUnderflowWarning,
                stacklevel=5,  # _check_underflow < step < no_grad < Optimizer's hook wrapper < the caller
            )

    def _backend(self, group: dict[str, Any], spec: Spec, params: list[Tensor], grads, states) -> str:
        backend = group["backend"]
        if torch.compiler.is_compiling():
            return "reference"  # the caller compiles the whole step: give dynamo plain tensor code
        if backend == "native" and kernels.can_native(spec, params, grads, states):
            return "native"
        if backend == "auto":
            # torch's own fused kernel where it computes the rule exactly for one model (decoupled with
            # scale "lr" is then torch's AdamW bit for bit); decaylab's native step for the other forms
            # and for stacked models (one call for all K instead of one per model)
            prefer_fused = not spec.stacked and spec.form in ("l2", "decoupled", "prox")
            if prefer_fused and kernels.can_fuse(spec, params, grads):
                return "fused"
            if kernels.can_native(spec, params, grads, states):
                return "native"
            if not prefer_fused and kernels.can_fuse(spec, params, grads):
                return "fused"
        if backend == "fused" and kernels.can_fuse(spec, params, grads):
            return "fused"
        if backend in ("auto", "fused", "native"):
            if self._compile_failed or sum(p.numel() for p in params) < kernels.AUTO_COMPILE_MIN_NUMEL:
                backend = "foreach"
            else:
                backend = "compiled"
        if backend == "compiled" and not kernels.can_compile(params, grads, states):
            backend = "foreach"
        return backend

    def _buckets(self, group: dict[str, Any]):
        buckets: dict[tuple, list[Tensor]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError(
                    "params: decaylab optimizers need dense gradients, and a parameter of shape "
                    f"{tuple(p.shape)} has a sparse one (use torch.optim.SparseAdam for sparse embeddings)"
                )
            # Sharded (DTensor) parameters bucket by their sharding too: one bucket's partial sums
            # complete with one set of collectives (decaylab.optim.sharded).
            buckets.setdefault((p.device, p.dtype, sharded.shard_key(p)), []).append(p)
        return buckets

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step (``closure`` re-evaluates the loss, as in torch.optim)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Everything that can reject this step (schedules' values, sparse gradients) runs before
        # any group is touched, so a failed step changes nothing.
        plans = [(group, self._group_hparams(group), self._buckets(group)) for group in self.param_groups]
        deferred = []  # the stable form needs mean(v̂) over all its parameters before any update
        for index, (group, hp_group, buckets) in enumerate(plans):
            stacked = any(isinstance(v, Tensor) and v.dim() == 1 for v in hp_group.values())
            for (device, dtype, _), params in buckets.items():
                spec = self._spec(group, params[0], stacked)
                fresh = [self.state[p].get("momentum_buffer") is None for p in params]
                states_per_param = [self._init_state(p, group, spec) for p in params]
                states = {k: [st[k] for st in states_per_param] for k in spec.state_keys}
                grads = [p.grad for p in params]
                cdtype = precision.compute_dtype(dtype)
                hp = {k: self._hp_tensor(v, device, cdtype) for k, v in hp_group.items()}
                if spec.direction == "sgd" and spec.form == "stable":
                    hp["mean_vhat"] = torch.as_tensor(
                        ((1 - group["momentum"]) / (1 - group["dampening"])) ** 2, dtype=cdtype, device=device
                    )
                pp = self._per_param(group, spec, params, fresh, device, cdtype)
                self._check_underflow(index, group, dtype, spec, hp_group)
                backend = self._backend(group, spec, params, grads, states)
                if backend == "fused":  # torch's kernels take the step counts and the gradients themselves
                    pp = dict(pp, step=[self.state[p]["step"] for p in params], grad=grads)
                elif backend == "native":  # the stable form's update phase reads the gradients again
                    pp = dict(pp, grad=grads)
                job = (spec, backend, group["backend"], params, grads, states, hp, pp)
                if spec.form == "stable" and spec.direction == "adam":
                    deferred.append(job)
                else:
                    self._run(job)
            group["step"] += 1
        if deferred:
            self._run_stable(deferred)
        return loss

    def _run(self, job) -> None:
        spec, backend, requested, params, grads, states, hp, pp = job
        params, grads, states = sharded.local_shards(params, grads, states)  # the update is elementwise
        try:
            kernels.EXECUTORS[backend][0](spec, params, grads, states, hp, pp)
        except Exception as exc:  # a compiler failure under backend="auto": fall back, loudly, once
            if backend != "compiled" or requested != "auto":
                raise
            self._compile_failed = True
            warnings.warn(f"decaylab: the compiled step failed ({type(exc).__name__}: {exc}); "
                          "using foreach from now on", stacklevel=4)
            kernels.EXECUTORS["foreach"][0](spec, params, grads, states, hp, pp)

    def _run_stable(self, jobs) -> None:
        total, count = 0, 0
        for spec, backend, _, params, grads, states, hp, pp in jobs:
            s = kernels.EXECUTORS[backend][1](spec, *sharded.local_shards(params, grads, states), hp, pp)
            s = sharded.global_sum(s, params[0])  # over local shards: complete it over the whole parameters
            # The sum may live on another device or dtype than its neighbours': gather in fp64 on CPU.
            total = total + torch.as_tensor(s).to("cpu", torch.float64)
            count += sum(p.numel() // (p.shape[0] if spec.stacked else 1) for p in params)
        mean_vhat = total / count
        for spec, backend, _, params, _grads, states, hp, pp in jobs:
            hp = dict(hp, mean_vhat=mean_vhat.to(hp["lr"].device, hp["lr"].dtype))
            params, _, states = sharded.local_shards(params, [], states)
            kernels.EXECUTORS[backend][2](spec, params, states, hp, pp)

    def _low_precision(self, group: dict[str, Any], p: Tensor) -> str:
        return group["low_precision"] if p.dtype in precision.LOW_PRECISION else "none"

    def _common_state(self, p: Tensor, state: dict[str, Tensor], spec: Spec) -> None:
        if spec.low_precision == "kahan" and "kahan_comp" not in state:
            state["kahan_comp"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if spec.to_init and "init_param" not in state:
            state["init_param"] = p.detach().clone(memory_format=torch.preserve_format)


def _step_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class Adam(DecayOptimizer):
    r"""Adam with any decay rule. With the defaults it is ``torch.optim.Adam`` (L2 in the gradient).

    .. math::

        m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad v_t = β_2 v_{t-1} + (1-β_2) g_t^2,\quad
        u_t = \frac{m_t/(1-β_1^t)}{\sqrt{v_t/(1-β_2^t)} + ε}

    and ``w ← w − lr_t·u_t`` combined with the decay form (see :mod:`decaylab.optim.rules`).
    ``weight_decay`` uses the convention of ``decay_scale``: with ``"lr"`` (default) it is
    torch's λ; with ``"schedule"`` it is the AdamW paper's λ (``λ_paper = λ_torch · max_lr``).

    Example:
        >>> import torch
        >>> from decaylab.optim import Adam
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = Adam([w], lr=0.1, weight_decay=0.5, decay="decoupled")
        >>> w.grad = torch.zeros(3); opt.step()
        >>> round(w[0].item(), 4)  # pure decay: 1 − 0.1·0.5
        0.95
    """

    direction = "adam"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | Tensor | Callable[[int], float] = 0.0,
        *,
        decay: str = "l2",
        decay_scale: str = "lr",
        max_lr: float | Tensor | None = None,
        decay_to: str = "zero",
        amsgrad: bool = False,
        maximize: bool = False,
        backend: str = "auto",
        low_precision: str = "kahan",
    ):
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decay=decay, decay_scale=decay_scale,
            max_lr=max_lr, decay_to=decay_to, amsgrad=amsgrad, maximize=maximize, backend=backend,
            low_precision=low_precision,
        )
        super().__init__(params, defaults)

    def _validate_direction(self, group: dict[str, Any]) -> None:
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2) with each in [0, 1); got {betas!r}")
        for i, b in enumerate(betas):
            if not _is_number(b) or not 0.0 <= b < 1.0:
                raise ValueError(f"betas[{i}] must be a number in [0, 1); got {b!r}")
        if not _is_number(group["eps"]) or not math.isfinite(group["eps"]) or group["eps"] < 0:
            raise ValueError(f"eps must be a finite number >= 0; got {group['eps']!r}")
        group["betas"] = (float(betas[0]), float(betas[1]))

    def _spec(self, group, p, stacked):
        return Spec(
            direction="adam", form=group["decay"], to_init=group["decay_to"] == "init", amsgrad=bool(group["amsgrad"]),
            maximize=bool(group["maximize"]), eps=float(group["eps"]),
            low_precision=self._low_precision(group, p), stacked=stacked,
        )

    def _group_hparams(self, group):
        beta1, beta2 = group["betas"]
        return dict(super()._group_hparams(group), beta1=beta1, beta2=beta2)

    def _init_state(self, p, group, spec):
        state = self.state[p]
        if "exp_avg" not in state:
            state["step"] = torch.tensor(0.0, dtype=_step_dtype())
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if spec.amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        self._common_state(p, state, spec)
        return state

    def _per_param(self, group, spec, params, fresh, device, dtype):
        steps = [self.state[p]["step"] for p in params]
        torch._foreach_add_(steps, 1.0)
        beta1, beta2 = group["betas"]
        if not all(s.is_cpu for s in steps):  # capturable-style counts on the device: no host sync
            corrections = [directions.adam_bias_corrections(beta1, beta2, s.to(device=device, dtype=dtype))
                           for s in steps]
        else:
            # torch keeps step counts on the CPU, and so does decaylab: the corrections are computed in
            # Python floats (float64, as torch.optim.Adam does), once per distinct count of the bucket
            # (nearly always one), and shared as 0-dim tensors.
            made: dict[float, tuple[Tensor, Tensor]] = {}
            corrections = []
            for s in steps:
                t = s.item()
                if t not in made:
                    c1, c2 = directions.adam_bias_corrections(beta1, beta2, t)
                    made[t] = (self._hp_tensor(c1, device, dtype), self._hp_tensor(c2, device, dtype))
                corrections.append(made[t])
        return {"inv_bias_correction1": [c[0] for c in corrections],
                "inv_bias_correction2_sqrt": [c[1] for c in corrections]}


class SGD(DecayOptimizer):
    r"""SGD (with momentum) and any decay rule. With the defaults it is ``torch.optim.SGD``.

    .. math::

        b_t = μ b_{t-1} + (1-δ) g_t \;(b_1 = g_1),\quad u_t = g_t + μ b_t \text{ (Nesterov) or } b_t

    and ``w ← w − lr_t·u_t`` combined with the decay form. With ``momentum=0`` the forms ``l2``
    and ``decoupled`` (scale ``"lr"``) coincide. ``prox_euclid`` equals ``prox`` here (``D = 1``);
    ``stable`` multiplies the decay by ``(1 − δ)/(1 − μ)`` (SGDS).

    Example:
        >>> import torch
        >>> from decaylab.optim import SGDW
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> opt = SGDW([w], lr=0.1, momentum=0.9, weight_decay=0.1)
        >>> w.grad = torch.zeros(2); opt.step()
        >>> round(w[0].item(), 4)  # 1 − 0.1·0.1
        0.99
    """

    direction = "sgd"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float | Tensor | Callable[[int], float] = 0.0,
        nesterov: bool = False,
        *,
        decay: str = "l2",
        decay_scale: str = "lr",
        max_lr: float | Tensor | None = None,
        decay_to: str = "zero",
        maximize: bool = False,
        backend: str = "auto",
        low_precision: str = "kahan",
    ):
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov, decay=decay,
            decay_scale=decay_scale, max_lr=max_lr, decay_to=decay_to, maximize=maximize, backend=backend,
            low_precision=low_precision,
        )
        super().__init__(params, defaults)

    def _validate_direction(self, group):
        momentum, dampening = group["momentum"], group["dampening"]
        if not _is_number(momentum) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1); got {momentum!r}")
        if not _is_number(dampening) or not 0 <= dampening <= 1:
            raise ValueError(f"dampening must be a number in [0, 1]; got {dampening!r}")
        if group["nesterov"] and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")
        if group["decay"] == "stable" and dampening == 1:
            raise ValueError("dampening must be < 1 with decay='stable' (it divides by 1 − dampening)")

    def _spec(self, group, p, stacked):
        return Spec(
            direction="sgd", form=group["decay"], to_init=group["decay_to"] == "init", maximize=bool(group["maximize"]),
            momentum=float(group["momentum"]), nesterov=bool(group["nesterov"]),
            low_precision=self._low_precision(group, p), stacked=stacked,
        )

    def _init_state(self, p, group, spec):
        state = self.state[p]
        if spec.momentum != 0 and state.get("momentum_buffer") is None:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        self._common_state(p, state, spec)
        return state

    def _per_param(self, group, spec, params, fresh, device, dtype):
        if spec.momentum == 0:
            return {}
        keep, gain = [], []
        for first in fresh:
            # torch starts the buffer at g on the first step: b_1 = 0·b_0 + 1·g_1.
            keep.append(self._hp_tensor(0.0 if first else spec.momentum, device, dtype))
            gain.append(self._hp_tensor(1.0 if first else 1.0 - group["dampening"], device, dtype))
        return {"keep": keep, "gain": gain}


def _preset(base: type, name: str, doc: str, **fixed: Any) -> type:
    """A named optimizer that only changes ``base``'s defaults (no step code of its own)."""

    def __init__(self, params, *args, **kwargs):
        for key, value in fixed.items():
            kwargs.setdefault(key, value)
        base.__init__(self, params, *args, **kwargs)

    return type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


AdamW = _preset(
    Adam, "AdamW",
    r"""Adam with decoupled weight decay, torch's convention: ``w ← w − lr_t·λ·w − lr_t·u_t``.

    Defaults as ``torch.optim.AdamW`` (``weight_decay=0.01``). For the AdamW paper's convention,
    where the decay per step is ``η_t·λ`` and the base lr does not multiply it, pass
    ``decay_scale="schedule"`` and ``λ_paper = λ_torch · lr``.
    """,
    decay="decoupled", weight_decay=0.01,
)
ProxAdam = _preset(
    Adam, "ProxAdam",
    r"""ProxAdam (Zhuang et al., 2022): ``w ← (w − lr_t·u_t) / (1 + lr_t·λ)``; scale-free like AdamW.""",
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
    r"""Adam with stable weight decay (Xie et al.): ``w ← w − lr_t·λ·w / sqrt(mean v̂_t) − lr_t·u_t``.""",
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

    With ``decay_scale="lr"`` (default) λ is torch's; the paper's SGDW uses ``"schedule"``.
    """,
    decay="decoupled",
)
