"""What a run is (:class:`TrainConfig`) and what it gives back (:class:`RunResult`).

A config is plain data: every field is a number, a string, a bool, ``None`` or a tuple of
numbers, so it round-trips through JSON (:meth:`TrainConfig.to_dict` / :meth:`TrainConfig.from_dict`)
and hashes to a stable run identity (:meth:`TrainConfig.key`). Bad values raise ``ValueError``
when the config is made, naming the field and what it allows.

The fields above ``# --- additions`` are the contract with :mod:`decaylab.sweep` and
:mod:`decaylab.report`; the fields below it were added later and enter :meth:`TrainConfig.key`
only when they differ from their defaults, so adding a field never changes the key of an
existing run.

>>> config = TrainConfig(lr=3e-3, weight_decay=0.1, epochs=2)
>>> TrainConfig.from_dict(config.to_dict()) == config
True
>>> config.key() == TrainConfig(lr=0.003, weight_decay=0.1, epochs=2.0).key()
True
>>> TrainConfig(schedule="linear")
Traceback (most recent call last):
...
ValueError: schedule must be one of 'constant', 'cosine', 'warmup_cosine', 'step', 'restarts'; got 'linear'
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from decaylab.optim import OPTIMIZERS as _DECAYLAB_OPTIMIZERS
from decaylab.optim import RULES, SCALES

__all__ = ["TrainConfig", "RunResult", "OPTIMIZERS", "SCHEDULES", "PRECISIONS", "DECAY_SCHEDULES"]

# decaylab's directions (decaylab.optim.OPTIMIZERS: "adam", "sgd", …), and torch-adamw: torch.optim.AdamW
# itself (low-precision baselines)
OPTIMIZERS = (*_DECAYLAB_OPTIMIZERS, "torch-adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step", "restarts")
PRECISIONS = ("fp32", "bf16-autocast", "bf16")
DECAY_SCHEDULES = ("constant", "early", "late")

#: The largest seed: torch's generators take 64-bit seeds, and a store or JSON reader may hold only int64.
MAX_SEED = 2**63 - 1

# Fields that may differ between configs trained together as one stacked model.
_PER_MODEL = ("lr", "weight_decay", "seed")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, model, optimizer (direction × decay rule), schedule, precision.

    ``weight_decay`` is in the convention of ``decay_scale`` (``"lr"``: torch's λ, decay per step
    ``lr_t·λ``; ``"schedule"``: the AdamW paper's λ, decay per step ``(lr_t/lr)·λ``; see
    :mod:`decaylab.optim.rules`). ``lr`` is the peak learning rate; the schedule multiplies it
    by ``η_t`` (:mod:`decaylab.train.schedules`). The run takes ``steps`` optimizer steps, or
    ``round(epochs · steps_per_epoch)`` when ``steps`` is None, where an epoch is
    ``n_train // batch_size`` steps (the last incomplete batch of each epoch is dropped; every
    epoch is a fresh permutation from a generator seeded by ``seed``).
    """

    dataset: str = "mnist1d"  # decaylab.data.load name
    model: str = "mlp"  # decaylab.models.build name
    optimizer: str = "adam"  # a decaylab direction ("adam", "sgd": decaylab.optim.OPTIMIZERS) | "torch-adamw"
    decay: str = "decoupled"  # decaylab decay form
    decay_scale: str = "lr"
    lr: float = 1e-3
    weight_decay: float = 0.0  # in the convention of decay_scale
    momentum: float = 0.9  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    epochs: float = 10  # or steps
    steps: int | None = None  # overrides epochs when set
    batch_size: int = 128
    schedule: str = "cosine"  # "constant" | "cosine" | "warmup_cosine" | "step" | "restarts"
    warmup_steps: int = 0  # linear warmup before any schedule: η_t = (t+1)/warmup_steps
    seed: int = 0  # model init (torch.manual_seed) and data order (a torch.Generator)
    no_decay_bias_norm: bool = True  # biases and normalization parameters are not decayed
    eval_every: int = 0  # steps between evaluations (0: only at the end); one curve point each
    precision: str = "fp32"  # "fp32" | "bf16-autocast" | "bf16"
    grad_clip: float | None = None  # max global gradient norm (per model when stacked)
    # --- additions (enter key() only when not at their defaults)
    final_lr_ratio: float = 0.0  # cosine / restarts anneal to final_lr_ratio·lr
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # "step": fractions of the run where lr *= lr_gamma
    lr_gamma: float = 0.1  # "step": factor at each milestone
    restart_steps: int | None = None  # "restarts": first period T_0 in steps (None: 3 periods fill the run)
    restart_mult: int = 2  # "restarts": T_{i+1} = restart_mult·T_i
    decay_schedule: str = "constant"  # "constant" | "early" (λ until decay_switch) | "late" (λ from it)
    decay_switch: float = 0.5  # fraction of the run where early decay stops / late decay starts
    ema_beta: float | None = None  # weight EMA per step; adds ema_* final metrics
    train_eval_size: int = 1024  # train loss/acc on a fixed random subset of this many training examples
    block_size: int = 128  # language models: context length
    lm_eval_batches: int = 8  # language models: batches of batch_size windows per evaluation
    loss_scale: float = 1.0  # the training loss is multiplied by this (scale-freeness tests); evaluation is unscaled
    lr_factors: tuple[float, ...] = ()  # multiplies η_t by the piecewise-linear curve through these values at
    #   evenly spaced fractions of the run (0, 1/(n−1), …, 1); () for none (see decaylab.train.schedules)
    jacobian_probe: int = 0  # > 0: final metric jacobian_norm, mean ‖∂logits/∂w‖_F over the first N test inputs

    # ------------------------------------------------------------------ validation

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        for name in ("dataset", "model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty name (str); got {value!r}")
        set_("dataset", self.dataset.lower())
        _check_model(self.model)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("decay", self.decay, tuple(RULES))
        _choice("decay_scale", self.decay_scale, SCALES)
        scales = RULES[self.decay].scales
        if scales is not None and self.decay_scale not in scales:
            raise ValueError(
                f"decay_scale must be {' or '.join(repr(x) for x in scales)} with decay={self.decay!r} (the decay "
                f"enters the gradient and is scaled like it); got {self.decay_scale!r}"
            )
        set_("lr", _real("lr", self.lr, low=0.0, strict=True))
        set_("weight_decay", _real("weight_decay", self.weight_decay, low=0.0))
        set_("momentum", _real("momentum", self.momentum, low=0.0, high=1.0))
        betas = self.betas
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), each a number in [0, 1); got {betas!r}")
        set_("betas", tuple(_real(f"betas[{i}]", b, low=0.0, high=1.0) for i, b in enumerate(betas)))
        set_("eps", _real("eps", self.eps, low=0.0))
        set_("epochs", _real("epochs", self.epochs, low=0.0, strict=True))
        if self.steps is not None:
            set_("steps", _int("steps", self.steps, low=1, none_ok=True))
        set_("batch_size", _int("batch_size", self.batch_size, low=1))
        _choice("schedule", self.schedule, SCHEDULES)
        set_("warmup_steps", _int("warmup_steps", self.warmup_steps, low=0))
        if self.schedule == "warmup_cosine" and self.warmup_steps == 0:
            raise ValueError("warmup_steps must be an int >= 1 with schedule='warmup_cosine'; got 0")
        set_("seed", _int("seed", self.seed, low=0, high=MAX_SEED))
        _bool("no_decay_bias_norm", self.no_decay_bias_norm)
        set_("eval_every", _int("eval_every", self.eval_every, low=0))
        _choice("precision", self.precision, PRECISIONS)
        if self.grad_clip is not None:
            set_("grad_clip", _real("grad_clip", self.grad_clip, low=0.0, strict=True, none_ok=True))
        set_("final_lr_ratio", _real("final_lr_ratio", self.final_lr_ratio, low=0.0, high=1.0, high_ok=True))
        milestones = self.lr_milestones
        bad_milestones = (
            f"lr_milestones must be a tuple of fractions of the run in (0, 1), increasing; got {milestones!r}"
        )
        if not isinstance(milestones, (tuple, list)):
            raise ValueError(bad_milestones)
        milestones = tuple(
            _real(f"lr_milestones[{i}]", m, low=0.0, high=1.0, strict=True) for i, m in enumerate(milestones)
        )
        if list(milestones) != sorted(set(milestones)):
            raise ValueError(bad_milestones)
        set_("lr_milestones", milestones)
        set_("lr_gamma", _real("lr_gamma", self.lr_gamma, low=0.0))
        if self.restart_steps is not None:
            set_("restart_steps", _int("restart_steps", self.restart_steps, low=1, none_ok=True))
        set_("restart_mult", _int("restart_mult", self.restart_mult, low=1))
        _choice("decay_schedule", self.decay_schedule, DECAY_SCHEDULES)
        set_("decay_switch", _real("decay_switch", self.decay_switch, low=0.0, high=1.0, high_ok=True))
        if self.ema_beta is not None:
            set_("ema_beta", _real("ema_beta", self.ema_beta, low=0.0, high=1.0, none_ok=True))
        set_("train_eval_size", _int("train_eval_size", self.train_eval_size, low=1))
        set_("block_size", _int("block_size", self.block_size, low=1))
        set_("lm_eval_batches", _int("lm_eval_batches", self.lm_eval_batches, low=1))
        set_("loss_scale", _real("loss_scale", self.loss_scale, low=0.0, strict=True))
        factors = self.lr_factors
        if not isinstance(factors, (tuple, list)) or len(factors) == 1:
            raise ValueError(f"lr_factors must be a tuple of at least 2 numbers >= 0, or () for none; got {factors!r}")
        set_("lr_factors", tuple(_real(f"lr_factors[{i}]", f, low=0.0) for i, f in enumerate(factors)))
        set_("jacobian_probe", _int("jacobian_probe", self.jacobian_probe, low=0))
        if self.jacobian_probe and self.is_language_model:
            raise ValueError(f"jacobian_probe must be 0 for a language model ({self.model!r}: its Jacobian has "
                             f"block_size·vocab rows per input); got {self.jacobian_probe}")
        if self.optimizer == "torch-adamw":
            fixed = {"decay": "decoupled", "decay_scale": "lr", "decay_schedule": "constant"}
            for name, value in fixed.items():
                if getattr(self, name) != value:
                    raise ValueError(f"{name} must be {value!r} with optimizer='torch-adamw' (torch.optim.AdamW's "
                                     f"own rule); got {getattr(self, name)!r}")

    # ------------------------------------------------------------------ identity and (de)serialization

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON data (tuples become lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config :meth:`to_dict` wrote (missing fields take their defaults)."""
        if not isinstance(d, dict):
            raise ValueError(f"from_dict needs a dict of TrainConfig fields; got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; the fields are {names}")
        return cls(**d)

    def key(self) -> str:
        """A stable run identity: the sha1 of the sorted JSON of the fields (hex, 40 characters).

        Fields added after the contract (those below ``# --- additions``) are left out while
        they hold their defaults, so an old run's key stays valid when a field is added.
        """
        d = self.to_dict()
        for f in dataclasses.fields(self):
            if f.name not in _CONTRACT_FIELDS and getattr(self, f.name) == f.default:
                del d[f.name]
        text = json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha1(text.encode()).hexdigest()

    def stack_key(self) -> tuple:
        """Configs with equal stack keys can train together as one stacked model: everything
        but ``lr``, ``weight_decay`` and ``seed`` is equal (with ``optimizer="torch-adamw"``, all but ``seed``)."""
        # torch.optim.AdamW takes one lr and one λ per group: only seeds stack.
        per_model = ("seed",) if self.optimizer == "torch-adamw" else _PER_MODEL
        return tuple((k, _hashable(v)) for k, v in sorted(self.to_dict().items()) if k not in per_model)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def is_language_model(self) -> bool:
        return self.model.startswith("gpt")


_CONTRACT_FIELDS = frozenset(
    "dataset model optimizer decay decay_scale lr weight_decay momentum betas eps epochs steps batch_size schedule "
    "warmup_steps seed no_decay_bias_norm eval_every precision grad_clip".split()
)


@dataclass
class RunResult:
    """What one run gives back.

    ``final``: ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc`` (language models:
    ``train_loss``, ``val_loss`` and ``test_loss`` = ``val_loss``), ``weight_norm`` (‖w‖₂ over
    all trainable parameters), ``wall_s`` (seconds; for stacked runs the stacked wall time
    divided by the number of models), ``steps``; with ``ema_beta`` also ``ema_test_loss``,
    ``ema_test_acc`` (LM: ``ema_val_loss``), ``ema_weight_norm``.

    ``curves``: one dict per evaluation (every ``eval_every`` steps and at the end) with
    ``step``, ``epoch``, ``lr`` (of the last step), ``train_loss``, ``train_acc``,
    ``test_loss``, ``test_acc`` (absent for language models, which have ``val_loss`` too),
    ``weight_norm`` and ``effective_lr`` (``lr/‖w‖`` for Adam, ``lr/‖w‖²`` for SGD); with
    ``grad_clip``, ``grad_norm`` (before clipping, of the last step).

    ``records``: the :class:`decaylab.diagnostics.Monitor` records of the instruments passed to
    :func:`~decaylab.train.train` (empty without instruments).

    ``model``: the trained ``nn.Module`` (for stacked runs, model k's own copy); not part of
    :meth:`to_dict`.
    """

    config: TrainConfig
    final: dict[str, float]
    curves: list[dict] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    model: Any = field(default=None, repr=False, compare=False)  # the trained module (not serialized)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "final": dict(self.final), "curves": [dict(c) for c in self.curves],
                "records": [dict(r) for r in self.records]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        return cls(TrainConfig.from_dict(d["config"]), dict(d["final"]), list(d.get("curves", [])),
                   list(d.get("records", [])))


# ---------------------------------------------------------------------- helpers


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")


def _check_model(name: str) -> None:
    from decaylab.models import available

    names = tuple(available())
    if name not in names:
        raise ValueError(f"model must be one of {', '.join(repr(a) for a in names)}; got {name!r}")


def _real(name: str, value: Any, *, low: float, high: float | None = None, strict: bool = False,
          high_ok: bool = False, none_ok: bool = False) -> float:
    op = ">" if strict else ">="
    allowed = f"a finite number {op} {low:g}"
    if high is not None:
        allowed += f" and {'<=' if high_ok else '<'} {high:g}"
    if none_ok:
        allowed += ", or None"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        above = value > low if strict else value >= low
        below = high is None or (value <= high if high_ok else value < high)
        ok = above and below
    if not ok:
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return float(value)


def _int(name: str, value: Any, *, low: int, high: int | None = None, none_ok: bool = False) -> int:
    ok = (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low
          and (high is None or value <= high))
    if not ok:
        allowed = f"an int >= {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{name} must be {allowed}{' or None' if none_ok else ''}; got {value!r}")
    return int(value)


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
