r"""The optimizer family: a direction (:mod:`~decaylab.optim.directions`) × a decay rule (:mod:`~decaylab.optim.rules`).

:class:`DecayOptimizer` is orchestration only: each step it *plans* (validates every group and
buckets its tensors, before anything moves), *dispatches* each bucket to an executor
(:mod:`~decaylab.optim.dispatch`) and *runs* it. :class:`Adam` and :class:`SGD` name a direction
and take the decay rule as keyword arguments; the named optimizers (:class:`AdamW`,
:class:`ProxAdam`, :class:`SGDW`, …) are presets that only change defaults
(:mod:`~decaylab.optim.presets`). Param groups, ``state_dict`` and lr schedulers work as in
``torch.optim`` (:mod:`~decaylab.optim.torch_compat`); a checkpoint of ``torch.optim.AdamW`` loads
into :class:`AdamW` and continues identically, and the other way round (for the forms torch has:
``l2`` and ``decoupled`` with ``decay_scale="lr"``). Equations and sources: ``docs/methods.md``.
"""
from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import precision, rules, sharded, torch_compat
from .directions.base import DIRECTIONS, Direction
from .dispatch import BACKENDS, Dispatcher, why_not_backend
from .executors import EXECUTORS, Bucket, BucketSpec, CarriedSums

__all__ = ["DecayOptimizer", "DecayUnderflowWarning", "StateUnderflowWarning", "OPTIMIZERS", "check_hparam"]


class DecayUnderflowWarning(UserWarning):
    """Weight decay rounds away: ``s_t·λ`` is below the parameters' dtype resolution."""


class StateUnderflowWarning(DecayUnderflowWarning):
    """A running average kept in 16 bits with round-to-nearest cannot move: ``1 − β`` is below its resolution."""


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_hparam(name: str, value: Any, *, allow_callable: bool = False, upper: float | None = None,
                 values: bool = True) -> None:
    """A non-negative number, or a tensor of shape () or (K,) of non-negative numbers.

    ``values=False`` checks a tensor's shape and dtype only (reading its values back is a device
    sync: the per-step checks skip it).
    """
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
        if not values:
            return
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


def _group_models(group: dict[str, Any]) -> dict[str, int]:
    """The lengths of a group's per-model (K,) hyperparameters, by argument name."""
    return {("max_lr" if k == torch_compat.MAX_LR else k): v.numel()
            for k in ("lr", "weight_decay", torch_compat.MAX_LR)
            if isinstance(v := group.get(k), Tensor) and v.dim() == 1}


def models(groups: list[dict[str, Any]]) -> int | None:
    """K when the optimizer trains K stacked models (some group has (K,) hyperparameters), else None.

    K is a fact of the whole optimizer: every bucket then computes per model, also a group whose
    hyperparameters are plain numbers, so that a global statistic (the stable form's mean v̂) is one
    per model and one model's NaN gradient stays in that model.
    """
    for group in groups:
        sizes = _group_models(group)
        if sizes:
            return next(iter(sizes.values()))
    return None


OPTIMIZERS: dict[str, type] = {}
"""The optimizer class of each direction by the direction's name (``"adam"`` → :class:`Adam`): the class
that names a direction registers itself; presets (which only change defaults) do not."""


# The keys every direction's group has (DecayOptimizer's own); the rest of a class's constructor arguments
# are its direction's hyperparameters.
_COMMON_KEYS = ("params", "self", "lr", "weight_decay", "decay", "decay_scale", "max_lr", "decay_to", "maximize",
                "backend", "low_precision", "foreach", "fused", "capturable", "differentiable")


def direction_defaults(name: str) -> dict[str, Any]:
    """The hyperparameter defaults of direction ``name`` (its optimizer class's constructor defaults)."""
    cls = OPTIMIZERS.get(name)
    if cls is None:
        raise ValueError(f"direction must be one of {', '.join(map(repr, OPTIMIZERS))}; got {name!r}")
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if k not in _COMMON_KEYS and p.default is not inspect.Parameter.empty}


class DecayOptimizer(torch.optim.Optimizer):
    """Base of the family: validation, state, buckets, dispatch. Subclasses name a direction.

    Param-group keys shared by every direction (each may differ per group):

    * ``weight_decay`` — λ: a number, a tensor of shape ``(K,)`` (one per stacked model), or a
      schedule ``step -> λ_t`` (see :mod:`decaylab.optim.schedules`) called with the 0-based index of
      the step being taken.
    * ``decay`` — the rule: a name in :data:`decaylab.optim.rules.RULES` (``"l2"``, ``"decoupled"``,
      ``"prox"``, ``"prox_euclid"``, ``"cautious"``, ``"stable"``, or a rule you registered), or a
      :class:`~decaylab.optim.rules.DecayRule` object (the group then holds its name).
    * ``decay_scale`` — ``s_t``: ``"lr"`` (torch), ``"schedule"`` (the AdamW paper),
      ``"corrected"`` (AdamC), ``"constant"``. ``"schedule"``/``"corrected"`` divide by the peak
      lr, the ``max_lr`` argument (group key ``decay_max_lr``: a key no torch scheduler writes;
      ``OneCycleLR`` writes its own ``max_lr``), which defaults to the group's lr when the
      optimizer is built.
    * ``decay_to`` — ``"zero"`` or ``"init"`` (decay toward the weights at construction, L2-SP).
    * ``backend`` — ``"auto"`` or an executor (``"reference"``, ``"foreach"``, ``"compiled"``,
      ``"fused"``, ``"native"``): see :mod:`decaylab.optim.dispatch` for what ``"auto"`` picks.
    * ``low_precision`` — ``"kahan"`` (default), ``"stochastic"`` or ``"none"``, for bf16/fp16
      parameters (see :mod:`decaylab.optim.precision`).

    ``lr`` and ``weight_decay`` may be tensors of shape ``(K,)`` when every parameter of the
    group stacks ``K`` models along dim 0: model ``k`` then trains with ``lr[k]`` and ``λ[k]``.
    """

    direction: ClassVar[Direction]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "direction" in cls.__dict__:
            OPTIMIZERS[cls.direction.name] = cls

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]):
        self.dispatcher = Dispatcher()
        self.carried = CarriedSums()  # the stable form's Σv between steps (fused and native paths)
        self._underflow_reported: set[tuple[int, torch.dtype]] = set()
        self._overflow_reported: set[tuple[int, torch.dtype]] = set()
        super().__init__(params, defaults)
        torch_compat.install_torch_load_warning()

    # ------------------------------------------------------------------ groups and validation

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group, dict) and "max_lr" in param_group:  # the argument's name, in a group dict
            param_group = dict(param_group)
            param_group[torch_compat.MAX_LR] = param_group.pop("max_lr")
        if isinstance(param_group, dict) and param_group.get("direction", self.direction.name) != self.direction.name:
            # a group on another direction (Muon's non-matrix parameters on Adam): that direction's own defaults
            param_group = direction_defaults(param_group["direction"]) | dict(param_group)
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

    def direction_of(self, group: dict[str, Any]) -> Direction:
        """The direction a param group runs: the optimizer's own, or the one its ``direction`` key names."""
        name = group.get("direction")
        if name is None or name == self.direction.name:
            return self.direction
        direction = DIRECTIONS.get(name) if isinstance(name, str) else None
        if direction is None:
            raise ValueError(f"direction must be one of {', '.join(map(repr, DIRECTIONS))}; got {name!r}")
        return direction

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Check a group as the constructor does (also a loaded one: a peak lr it has is kept)."""
        check_hparam("lr", group["lr"])
        check_hparam("weight_decay", group["weight_decay"], allow_callable=True)
        rule = rules.resolve(group["decay"])
        group["decay"] = rule.name
        _choice("decay_scale", group["decay_scale"], rules.SCALES)
        _choice("decay_to", group["decay_to"], rules.TARGETS)
        _choice("backend", group["backend"], BACKENDS)
        _choice("low_precision", group["low_precision"], precision.MODES)
        if rule.scales is not None and group["decay_scale"] not in rule.scales:
            raise ValueError(
                f"decay_scale={group['decay_scale']!r} has no effect with decay={rule.name!r}: the decay enters the "
                f"gradient and is scaled like it. Use decay_scale={rule.scales[0]!r} with {rule.name!r}, or a "
                "decoupled/proximal decay form."
            )
        direction = self.direction_of(group)
        direction.check_rule(rule)
        if group["low_precision"] in ("stochastic", "exact") and any(p.dtype == torch.float16 for p in group["params"]):
            raise ValueError(
                f"low_precision={group['low_precision']!r} works on bf16 parameters only; for float16 parameters use "
                "'kahan' or 'none'"
            )
        if group.get("state_dtype") not in precision.STATE_DTYPES:
            raise ValueError(
                f"state_dtype must be one of None (fp32 for 16-bit parameters, else theirs), "
                f"{', '.join(str(d) for d in precision.STATE_DTYPES[1:])}; got {group.get('state_dtype')!r}"
            )
        _choice("state_rounding", group.get("state_rounding", "nearest"), precision.STATE_ROUNDINGS)
        if group.get("state_rounding") == "stochastic" and group.get("state_dtype") != torch.bfloat16:
            raise ValueError("state_rounding='stochastic' rounds bf16 state: give state_dtype=torch.bfloat16 with it")
        if group["low_precision"] == "exact" and group.get("state_dtype") not in (None, torch.float32):
            raise ValueError(
                "low_precision='exact' follows the fp32 optimizer bit for bit, which needs fp32 state: leave "
                "state_dtype=None"
            )
        direction.validate(group)
        for p in group["params"]:
            if p.is_complex():
                raise ValueError("params: complex parameters are not supported; optimize torch.view_as_real(p) instead")
        self._resolve_max_lr(group)
        self._check_stacked(group)
        stacked = models(self.param_groups) is not None
        for p in group["params"]:
            direction.check_param(p, stacked)
        for dtype in {p.dtype for p in group["params"]}:
            why = precision.check_state_averages(direction.averages(group), precision.state_dtype(
                dtype, group.get("state_dtype")), group.get("state_rounding", "nearest"),
                f"param group {len(self.param_groups) - 1}")
            if why:
                warnings.warn(why, StateUnderflowWarning, stacklevel=4)
        if group["backend"] in ("fused", "native"):
            for p in group["params"]:
                why = why_not_backend(group["backend"], self._spec(group, rule, p, stacked), [p])
                if why:
                    raise ValueError(
                        f"backend={group['backend']!r} cannot run this param group: {why}. Use backend='auto' (it "
                        f"picks {group['backend']!r} wherever it can) or 'compiled'"
                    )
        group.setdefault("step", 0)

    def _resolve_max_lr(self, group: dict[str, Any]) -> None:
        key = torch_compat.MAX_LR
        if group.get(key) is None:
            peak = group.get("initial_lr", group["lr"])
            # A copy: torch's schedulers update a tensor lr in place, and the peak must not follow.
            group[key] = peak.detach().clone() if isinstance(peak, Tensor) else peak
        else:
            check_hparam("max_lr", group[key])
        if group["decay_scale"] in ("schedule", "corrected") and _is_zero(group[key]):
            raise ValueError(
                f"max_lr: decay_scale={group['decay_scale']!r} divides by the peak learning rate, which defaults to "
                "the group's lr when the optimizer is built, and that lr is 0 (a warmup from 0?). "
                "Pass max_lr=<peak lr> (> 0)."
            )

    def _check_stacked(self, group: dict[str, Any]) -> None:
        sizes = _group_models(group)
        ks = set(sizes.values())
        if len(ks) > 1:
            raise ValueError(
                f"lr, weight_decay and max_lr must have the same length K when given per model; got {sizes}"
            )
        others = models([g for g in self.param_groups if g is not group])
        if ks and others is not None and others not in ks:
            raise ValueError(
                f"lr, weight_decay and max_lr: this param group trains {next(iter(ks))} stacked models and another "
                f"group {others}; every group of an optimizer stacks the same K models"
            )
        k = next(iter(ks)) if ks else others
        if k is None:
            return
        for p in (p for g in self.param_groups for p in g["params"]):
            if p.dim() == 0 or p.shape[0] != k:
                raise ValueError(
                    f"params: with per-model hyperparameters of length {k} every parameter must stack {k} models along "
                    f"dim 0; got a parameter of shape {tuple(p.shape)}"
                )

    # ------------------------------------------------------------------ state dicts (torch_compat)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        torch_compat.fill_groups(self)
        self.dispatcher = Dispatcher()
        self.carried = CarriedSums()
        self._underflow_reported = set()
        self._overflow_reported = set()

    def state_dict(self) -> dict[str, Any]:
        return torch_compat.to_torch_state_dict(self, super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a decaylab or ``torch.optim`` state dict, checked as the constructor checks arguments.

        Every group's hyperparameters are validated, and every state tensor's shape against its
        parameter's (dtype and device follow the parameter, as in torch). A state dict that fails
        leaves the optimizer as it was.
        """
        torch_compat.load_state_dict(self, state_dict, super().load_state_dict)

    # ------------------------------------------------------------------ the step

    def _spec(self, group: dict[str, Any], rule: rules.DecayRule, p: Tensor, stacked: bool,
              options: dict[str, Any] | None = None) -> BucketSpec:
        low = group["low_precision"] if p.dtype in precision.LOW_PRECISION else "none"
        direction = self.direction_of(group)
        if options is None:
            options = direction.bucket_options(p, stacked)
        return BucketSpec(
            direction=direction, rule=rule, to_init=group["decay_to"] == "init",
            maximize=bool(group["maximize"]), low_precision=low, stacked=stacked,
            options=tuple((direction.options(group) | options).items()),
            state_dtype=precision.state_dtype(p.dtype, group.get("state_dtype")),
            state_rounding=group.get("state_rounding", "nearest"),
        )

    def _group_hparams(self, group: dict[str, Any]) -> dict[str, Any]:
        """``lr``, ``lam``, ``s`` and the direction's scalars for this step of the group (floats or tensors)."""
        wd = group["weight_decay"]
        scheduled = callable(wd) and not isinstance(wd, Tensor)
        lam = wd(group["step"]) if scheduled else wd
        if scheduled:
            check_hparam("weight_decay (the value its schedule returned)", lam)
        direction = self.direction_of(group)
        lr = direction.effective_lr(group)
        hp = {"lr": lr, "lam": lam, "s": rules.decay_scale(group["decay_scale"], lr, group[torch_compat.MAX_LR])}
        return hp | direction.hparams(group)

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

    def _check_underflow(self, index: int, group: dict[str, Any], dtype: torch.dtype, spec: BucketSpec,
                         hp: dict[str, Any]) -> None:
        # A rule without a per-step shrink (l2 acts through the gradient, prox_euclid scales s_t·λ by 1/D_t)
        # or with a global statistic (stable's 1/sqrt(mean v̂), which only the kernel knows): the check
        # here would misjudge them.
        rule = spec.rule
        if rule.shrink is None or rule.needs & {"D", "mean_vhat"} or (index, dtype) in self._underflow_reported:
            return
        if torch.compiler.is_compiling():  # a check that reads values back has no place in a traced step
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
            lr, max_lr = hp["lr"], group[torch_compat.MAX_LR]
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

    def _check_step_group(self, group: dict[str, Any]) -> rules.DecayRule:
        """What a step needs of a group, checked before any group moves (a group may have been edited
        since it was added: by a scheduler, by hand). Cheap: no device sync."""
        check_hparam("lr", group["lr"], values=False)
        if not callable(group["weight_decay"]) or isinstance(group["weight_decay"], Tensor):
            check_hparam("weight_decay", group["weight_decay"], values=False)
        rule = rules.resolve(group["decay"])
        if group["backend"] not in BACKENDS:
            _choice("backend", group["backend"], BACKENDS)
        if group["decay_scale"] not in rules.SCALES:
            _choice("decay_scale", group["decay_scale"], rules.SCALES)
        return rule

    def _buckets(self, group: dict[str, Any], stacked: bool):
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
            # complete with one set of collectives (decaylab.optim.sharded); and by what the direction
            # needs to know of each parameter (Adafactor: factored or not).
            options = tuple(self.direction_of(group).bucket_options(p, stacked).items())
            buckets.setdefault((p.device, p.dtype, sharded.shard_key(p), options), []).append(p)
        return buckets

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step (``closure`` re-evaluates the loss, as in torch.optim)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # plan: everything that can reject this step (hyperparameters edited since, schedules' values,
        # sparse gradients) runs before any group is touched, so a failed step changes nothing.
        stacked = models(self.param_groups) is not None
        plans = [(group, self._check_step_group(group), self._group_hparams(group), self._buckets(group, stacked))
                 for group in self.param_groups]
        for group, _, _, buckets in plans:
            direction = self.direction_of(group)
            if not direction.elementwise and any(sharded.is_dtensor(p) for ps in buckets.values() for p in ps):
                raise ValueError(
                    f"params: the {direction.name} update is not element-wise (it reads whole matrices), and a "
                    "parameter is sharded (DTensor): a rank's shard is not the matrix. decaylab does not gather it; "
                    "optimize sharded parameters with an element-wise direction (AdamW)"
                )
        deferred: list[tuple[str, Bucket]] = []  # rules with a global statistic: every moment before any update
        for index, (group, rule, hp_group, buckets) in enumerate(plans):
            for (device, dtype, _, options), params in buckets.items():
                bucket = self._bucket(group, rule, hp_group, params, device, dtype, stacked, dict(options))
                self._check_underflow(index, group, dtype, bucket.spec, hp_group)
                name = self.dispatcher.choose(group["backend"], bucket)
                local = _local(bucket)
                if bucket.spec.global_statistic:
                    deferred.append((name, local))
                else:
                    self.dispatcher.step(name, group["backend"], local)
                if dtype == torch.float16:
                    precision.warn_overflow(params, f"param group {index}", self._overflow_reported, (index, dtype))
            self.direction_of(group).end_step(group, hp_group)
            group["step"] += 1
        if deferred:
            self._run_with_statistic(deferred)
        return loss

    def _bucket(self, group, rule, hp_group, params, device, dtype, stacked, options=None) -> Bucket:
        """A bucket ready to run: its spec, state (created on a parameter's first step), hyperparameters."""
        spec = self._spec(group, rule, params[0], stacked, options)
        direction = spec.direction
        per_param = [self.state[p] for p in params]
        fresh = [direction.init_state(p, st, spec) for p, st in zip(params, per_param, strict=True)]
        for p, st in zip(params, per_param, strict=True):
            if spec.low_precision == "kahan" and "kahan_comp" not in st:
                st["kahan_comp"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if spec.low_precision == "exact" and "param_remainder" not in st:
                st["param_remainder"] = torch.zeros_like(p, dtype=torch.int16)
            if spec.to_init and "init_param" not in st:
                st["init_param"] = p.detach().clone(memory_format=torch.preserve_format)
        states = {k: [st[k] for st in per_param] for k in spec.state_keys}
        cdtype = precision.compute_dtype(dtype)
        hp = {k: self._hp_tensor(v, device, cdtype) for k, v in hp_group.items()}
        raw = dict(hp_group)
        if "mean_vhat" in rule.needs and direction.statistic == "constant":
            raw["mean_vhat"] = direction.mean_vhat(group)
            hp["mean_vhat"] = self._hp_tensor(raw["mean_vhat"], device, cdtype)
        pp = direction.prepare(group, spec, params, per_param, fresh, lambda x: self._hp_tensor(x, device, cdtype))
        if "step" in per_param[0]:  # torch's fused kernels take the step counts themselves
            pp["step"] = [st["step"] for st in per_param]
        return Bucket(spec, params, [p.grad for p in params], states, hp, pp, self.carried, raw)

    def explain(self) -> list[dict[str, Any]]:
        """Which executor runs each bucket at the next step, and why each one before it cannot.

        One dict per bucket: ``group`` (index), ``executor``, ``tensors``, ``numel``, ``dtype``,
        ``device`` and ``refused`` (executor name -> reason). Buckets are the parameters that have a
        gradient (all parameters before the first backward). Changes nothing.
        """
        rows = []
        for index, group in enumerate(self.param_groups):
            rule = rules.resolve(group["decay"])
            stacked = models(self.param_groups) is not None
            with_grad = [p for p in group["params"] if p.grad is not None] or list(group["params"])
            by_key: dict[tuple, list[Tensor]] = {}
            for p in with_grad:
                options = tuple(self.direction_of(group).bucket_options(p, stacked).items())
                by_key.setdefault((p.device, p.dtype, sharded.shard_key(p), options), []).append(p)
            for (device, dtype, _, options), params in by_key.items():
                spec = self._spec(group, rule, params[0], stacked, dict(options))
                existing = [self.state.get(p, {}) for p in params]
                states = {k: [st[k] for st in existing] for k in spec.state_keys if all(k in st for st in existing)}
                grads = [p.grad if p.grad is not None else p for p in params]
                bucket = Bucket(spec, params, grads, states, {}, {}, self.carried)
                chosen = self.dispatcher.choose(group["backend"], bucket)
                refused = {name: why for name in EXECUTORS if name != chosen
                           and (why := EXECUTORS[name].why_not(bucket)) is not None}
                rows.append({"group": index, "executor": chosen, "tensors": len(params),
                             "numel": sum(p.numel() for p in params), "dtype": dtype, "device": device,
                             "refused": refused})
        return rows

    def _run_with_statistic(self, jobs: list[tuple[str, Bucket]]) -> None:
        """Two phases: every bucket's moments and ``Σ v̂``, then ``mean v̂`` and every update."""
        total, count = 0, 0
        for name, bucket in jobs:
            s = EXECUTORS[name].moments(bucket)
            s = sharded.global_sum(s, bucket.global_params[0])  # a sum over local shards: complete it
            # The sum may live on another device or dtype than its neighbours': gather in fp64 on CPU.
            total = total + torch.as_tensor(s).to("cpu", torch.float64)
            count += sum(p.numel() // (p.shape[0] if bucket.spec.stacked else 1) for p in bucket.global_params)
        mean_vhat = total / count
        for name, bucket in jobs:
            bucket.hp = dict(bucket.hp, mean_vhat=mean_vhat.to(bucket.hp["lr"].device, bucket.hp["lr"].dtype))
            EXECUTORS[name].update(bucket)


def _local(bucket: Bucket) -> Bucket:
    """The bucket on this rank's shards (the update is elementwise); the whole parameters stay for counting."""
    params, grads, states = sharded.local_shards(bucket.params, bucket.grads, bucket.states)
    if params is bucket.params:
        bucket.global_params = bucket.params
        return bucket
    return Bucket(bucket.spec, params, grads, states, bucket.hp, bucket.pp, bucket.carried, bucket.raw, bucket.params)
