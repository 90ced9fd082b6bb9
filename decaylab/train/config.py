"""What a run is (:class:`TrainConfig`) and what it gives back (:class:`RunResult`).

A config is plain data: every field is a number, a string, a bool, ``None`` or a tuple of
numbers, so it round-trips through JSON (:meth:`TrainConfig.to_dict` / :meth:`TrainConfig.from_dict`)
and hashes to a stable run identity (:meth:`TrainConfig.key`).

**One schema.** Every field carries its metadata (:class:`Meta`: what it is, its type, its choices
— read from the registries, never copied —, its range, whether it may differ between runs trained as
one stacked model). Everything else reads it: the config's own validation (:func:`check_field`), sweep
specs (:mod:`decaylab.sweep.spec`), the ``--field value`` options of ``decaylab train``
(:func:`parse_value`), one TOML loader for a run config and a spec's tables (:func:`check_fields`,
:func:`load_config`), and the per-model field list a sweep writes into its store
(:func:`per_model_fields`). Bad values raise ``ValueError`` naming the field and what it allows.

What a reproduction needs beyond the loop (a weight-decay window, a loss scale, a probe, EMA weights, an
lr curve) is a named callback in ``callbacks`` (:mod:`decaylab.train.callbacks`), not a field: the
fields those knobs were before still load (:func:`~decaylab.train.callbacks.from_legacy`).

The fields marked ``addition`` were added after the contract with :mod:`decaylab.sweep` and
:mod:`decaylab.report`; they enter :meth:`TrainConfig.key` only when they differ from their defaults,
so adding a field never changes the key of an existing run.

>>> config = TrainConfig(lr=3e-3, weight_decay=0.1, epochs=2)
>>> TrainConfig.from_dict(config.to_dict()) == config
True
>>> config.key() == TrainConfig(lr=0.003, weight_decay=0.1, epochs=2.0).key()
True
>>> TrainConfig(schedule="linear")
Traceback (most recent call last):
...
ValueError: schedule must be one of 'constant', 'cosine', 'warmup_cosine', 'step', 'restarts'; got 'linear'
>>> per_model_fields()
('lr', 'weight_decay', 'seed')
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from decaylab.optim import OPTIMIZERS as _DECAYLAB_OPTIMIZERS
from decaylab.optim import RULES, SCALES

__all__ = ["TrainConfig", "RunResult", "Meta", "OPTIMIZERS", "SCHEDULES", "PRECISIONS",
           "check_field", "check_fields", "parse_value", "load_config", "per_model_fields", "field_meta", "unknown_key"]

# decaylab's directions (decaylab.optim.OPTIMIZERS: "adam", "sgd", …), and torch-adamw: torch.optim.AdamW
# itself (low-precision baselines)
OPTIMIZERS = (*_DECAYLAB_OPTIMIZERS, "torch-adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step", "restarts")
PRECISIONS = ("fp32", "bf16-autocast", "bf16")

#: The largest seed: torch's generators take 64-bit seeds, and a store or JSON reader may hold only int64.
MAX_SEED = 2**63 - 1


# ---------------------------------------------------------------------------------------------- field metadata


def _datasets() -> tuple[str, ...]:
    from decaylab.data import available

    return tuple(info.name for info in available())


def _models() -> tuple[str, ...]:
    from decaylab.models import available

    return tuple(available())


@dataclass(frozen=True)
class Meta:
    """What a :class:`TrainConfig` field allows, stated once.

    ``kind``: ``"str"``, ``"int"``, ``"float"``, ``"bool"``, ``"floats"`` (a tuple of numbers, of
    ``length`` when given) or ``"strs"`` (a tuple of strings); ``choices``: a function returning the allowed
    names, read from a registry when a value is checked; ``low``/``high``: the range of a number (or
    of each number of a tuple), open at ``low`` when ``low_open``, closed at ``high`` when
    ``high_closed``; ``optional``: None is allowed (a spec leaves it out); ``per_model``: it may differ
    between runs trained together as one stacked model (``lr``, ``weight_decay``, ``seed``);
    ``addition``: added after the contract (it enters the key only away from its default);
    ``aliases``: names people write for it (an unknown key's did-you-mean); ``open_choices``: the
    choices bind a value read from a spec, a config file or the command line (where the name is all
    there is), not a config made in Python (``train(config, data=...)`` may name data of its own).
    """

    help: str
    kind: str
    choices: Callable[[], Sequence[str]] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_closed: bool = False
    optional: bool = False
    length: int | None = None
    per_model: bool = False
    addition: bool = False
    aliases: tuple[str, ...] = ()
    open_choices: bool = False

    def allowed(self) -> str:
        """What a value may be, in words: ``"a finite number >= 0 and < 1"``, ``"one of 'a', 'b'"``."""
        if self.choices is not None:
            return "one of " + ", ".join(map(repr, self.choices()))
        if self.kind == "bool":
            return "true or false"
        if self.kind == "str":
            return "a non-empty name"
        if self.kind == "floats":
            return self._tuple_text()
        if self.kind == "strs":
            return "a list of strings"
        text = f"{'an integer' if self.kind == 'int' else 'a finite number'}{self._range_text()}"
        return text + (" or None" if self.optional else "")

    def _range_text(self) -> str:
        def number(x: float) -> str:
            return str(int(x)) if self.kind == "int" else f"{x:g}"

        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {number(self.low)}")
        if self.high is not None:
            parts.append(f"{'<=' if self.high_closed else '<'} {number(self.high)}")
        return (" " + " and ".join(parts)) if parts else ""

    def _tuple_text(self) -> str:
        each = f"each a finite number{self._range_text()}"
        if self.length == 2:
            return f"a pair of numbers, {each}"
        return f"a list of numbers, {each}"

    def in_range(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value <= self.high if self.high_closed else value < self.high)
        return above and below


def _meta(default: Any, help: str, kind: str, **options: Any) -> Any:
    """A dataclass field with its :class:`Meta`."""
    return field(default=default, metadata={"meta": Meta(help, kind, **options)})


def _increasing(value: tuple[float, ...]) -> tuple[float, ...]:
    if list(value) != sorted(set(value)):
        raise ValueError(f"lr_milestones must be increasing fractions of the run in (0, 1); got {value!r}")
    return value


def _callbacks(value: tuple[str, ...]) -> tuple[str, ...]:
    from .callbacks import canonical

    return canonical(value)


# What one Meta cannot state about a field's value (a relation between its items, a registry's parser):
# a function of the checked tuple that returns it as the config holds it, or raises ValueError.
_NORMALIZE: dict[str, Callable[[Any], Any]] = {"lr_milestones": _increasing, "callbacks": _callbacks}


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, model, optimizer (direction × decay rule), schedule, precision.

    ``weight_decay`` is in the convention of ``decay_scale`` (``"lr"``: torch's λ, decay per step
    ``lr_t·λ``; ``"schedule"``: the AdamW paper's λ, decay per step ``(lr_t/lr)·λ``; see
    :mod:`decaylab.optim.rules`). ``lr`` is the peak learning rate; the schedule multiplies it
    by ``η_t`` (:mod:`decaylab.train.schedules`). The run takes ``steps`` optimizer steps, or
    ``round(epochs · steps_per_epoch)`` when ``steps`` is None, where an epoch is
    ``n_train // batch_size`` steps (the last incomplete batch of each epoch is dropped; every
    epoch is a fresh permutation from a generator seeded by ``seed``). Each field's ``Meta`` says
    what it is and allows (``dataclasses.fields(TrainConfig)[i].metadata["meta"]``).
    """

    dataset: str = _meta("mnist1d", "the dataset (decaylab.data.load name; case-insensitive)", "str",
                         choices=_datasets, aliases=("data",), open_choices=True)
    model: str = _meta("mlp", "the model (decaylab.models.build name)", "str", choices=_models, aliases=("arch",))
    optimizer: str = _meta("adam", "the direction: decaylab.optim.OPTIMIZERS, or torch-adamw (torch.optim.AdamW "
                                   "itself)", "str", choices=lambda: OPTIMIZERS, aliases=("optim",))
    decay: str = _meta("decoupled", "the decay rule's form (decaylab.optim.RULES)", "str", choices=lambda: tuple(RULES),
                       aliases=("form", "decay_form"))
    decay_scale: str = _meta("lr", "the decay's scale s_t, the convention of weight_decay (decaylab.optim.SCALES)",
                             "str", choices=lambda: SCALES, aliases=("scale", "convention"))
    lr: float = _meta(1e-3, "the peak learning rate", "float", low=0.0, low_open=True, per_model=True,
                      aliases=("learning_rate", "learningrate", "eta"))
    weight_decay: float = _meta(0.0, "λ, in the convention of decay_scale", "float", low=0.0, per_model=True,
                                aliases=("wd", "lambda", "lam", "decay_rate"))
    momentum: float = _meta(0.9, "SGD's momentum", "float", low=0.0, high=1.0)
    betas: tuple[float, float] = _meta((0.9, 0.999), "Adam's (beta1, beta2)", "floats", low=0.0, high=1.0, length=2,
                                       aliases=("beta1", "beta2"))
    eps: float = _meta(1e-8, "Adam's epsilon", "float", low=0.0)
    epochs: float = _meta(10.0, "passes over the training set (unless steps is set)", "float", low=0.0, low_open=True,
                          aliases=("epoch",))
    steps: int | None = _meta(None, "optimizer steps; overrides epochs when set", "int", low=1, optional=True,
                              aliases=("num_steps", "max_steps"))
    batch_size: int = _meta(128, "examples per step", "int", low=1, aliases=("bs", "batch"))
    schedule: str = _meta("cosine", "the lr schedule", "str", choices=lambda: SCHEDULES,
                          aliases=("scheduler", "lr_schedule"))
    warmup_steps: int = _meta(0, "linear warmup steps before any schedule: η_t = (t+1)/warmup_steps", "int", low=0,
                              aliases=("warmup",))
    seed: int = _meta(0, "model init (torch.manual_seed) and data order (a torch.Generator)", "int", low=0,
                      high=MAX_SEED, high_closed=True, per_model=True, aliases=("seeds",))
    no_decay_bias_norm: bool = _meta(True, "biases and normalization parameters are not decayed", "bool")
    eval_every: int = _meta(0, "steps between evaluations (0: only at the end); one curve point each", "int", low=0)
    precision: str = _meta("fp32", "parameter and compute precision", "str", choices=lambda: PRECISIONS)
    grad_clip: float | None = _meta(None, "max global gradient norm (per model when stacked); None: no clipping",
                                    "float", low=0.0, low_open=True, optional=True)
    final_lr_ratio: float = _meta(0.0, "cosine / restarts anneal to final_lr_ratio·lr", "float", low=0.0, high=1.0,
                                  high_closed=True, addition=True)
    lr_milestones: tuple[float, ...] = _meta((0.5, 0.75), "step schedule: fractions of the run where lr *= lr_gamma",
                                             "floats", low=0.0, low_open=True, high=1.0, addition=True)
    lr_gamma: float = _meta(0.1, "step schedule: factor at each milestone", "float", low=0.0, addition=True)
    restart_steps: int | None = _meta(None, "restarts schedule: first period T_0 in steps (None: 3 periods fill the "
                                            "run)", "int", low=1, optional=True, addition=True)
    restart_mult: int = _meta(2, "restarts schedule: T_{i+1} = restart_mult·T_i", "int", low=1, addition=True)
    train_examples: int | None = _meta(None, "train on this many of the training examples (the first of a fixed "
                                             "permutation: smaller subsets are part of larger ones); None: all",
                                       "int", low=1, optional=True, addition=True)
    train_eval_size: int = _meta(1024, "train loss/acc on a fixed random subset of this many training examples",
                                 "int", low=1, addition=True)
    block_size: int = _meta(128, "language models: context length", "int", low=1, addition=True)
    lm_eval_batches: int = _meta(8, "language models: batches of batch_size windows per evaluation", "int", low=1,
                                 addition=True)
    callbacks: tuple[str, ...] = _meta((), "knobs beyond the loop, each 'name:ARGS' of decaylab.train.callbacks."
                                            "CALLBACKS (e.g. ema:0.999)", "strs", addition=True,
                                        aliases=("callback", "knobs"))

    # ------------------------------------------------------------------ validation

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, check_field(f.name, getattr(self, f.name), registered=False))
        scales = RULES[self.decay].scales
        if scales is not None and self.decay_scale not in scales:
            raise ValueError(
                f"decay_scale must be {' or '.join(repr(x) for x in scales)} with decay={self.decay!r} (the decay "
                f"enters the gradient and is scaled like it); got {self.decay_scale!r}"
            )
        if self.schedule == "warmup_cosine" and self.warmup_steps == 0:
            raise ValueError("warmup_steps must be an integer >= 1 with schedule='warmup_cosine'; got 0")
        for callback in self.parsed_callbacks:
            callback.check(self)
        if self.optimizer == "torch-adamw":
            fixed = {"decay": "decoupled", "decay_scale": "lr"}
            for name, value in fixed.items():
                if getattr(self, name) != value:
                    raise ValueError(f"{name} must be {value!r} with optimizer='torch-adamw' (torch.optim.AdamW's "
                                     f"own rule); got {getattr(self, name)!r}")

    # ------------------------------------------------------------------ identity and (de)serialization

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON data (tuples become lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """The config :meth:`to_dict` wrote (missing fields take their defaults; the knob fields of an
        older decaylab become their callbacks: :func:`~decaylab.train.callbacks.from_legacy`)."""
        from .callbacks import from_legacy

        if not isinstance(d, Mapping):
            raise ValueError(f"from_dict needs a dict of TrainConfig fields; got {type(d).__name__}")
        d = from_legacy(d)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; the fields are {names}")
        return cls(**d)

    def key(self) -> str:
        """A stable run identity: the sha1 of the sorted JSON of the fields (hex, 40 characters).

        Fields added after the contract (``Meta.addition``) are left out while they hold their defaults, so
        an old run's key stays valid when a field is added; callbacks that were fields before are hashed
        as those fields (:func:`~decaylab.train.callbacks.legacy_fields`), so an old run keeps its key.
        """
        from .callbacks import legacy_fields

        d = self.to_dict()
        for f in dataclasses.fields(self):
            if f.metadata["meta"].addition and getattr(self, f.name) == f.default:
                del d[f.name]
        old = legacy_fields(self.callbacks) if self.callbacks else None
        if old is not None:
            del d["callbacks"]
            d.update(old)
        text = json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha1(text.encode()).hexdigest()

    @property
    def per_model(self) -> tuple[str, ...]:
        """The fields that may differ between this config and the others it trains with as one stacked
        model: :func:`per_model_fields`, only ``seed`` with ``optimizer="torch-adamw"`` (torch's AdamW
        takes one lr and one λ per group)."""
        return ("seed",) if self.optimizer == "torch-adamw" else per_model_fields()

    def stack_key(self) -> tuple:
        """Configs with equal stack keys can train together as one stacked model: every field but
        :attr:`per_model` is equal."""
        per_model = self.per_model
        return tuple((k, _hashable(v)) for k, v in sorted(self.to_dict().items()) if k not in per_model)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def is_language_model(self) -> bool:
        from decaylab.models import takes  # the registry says what each model reads

        return takes(self.model) == "tokens"

    @property
    def parsed_callbacks(self) -> list[Any]:
        """The :class:`~decaylab.train.callbacks.Callback` objects of ``callbacks`` (new ones each time: a
        callback may hold a run's state)."""
        from .callbacks import parse

        return [parse(text) for text in self.callbacks]


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



# ---------------------------------------------------------------------------------------------- the schema's readers


def field_meta(name: str) -> Meta:
    """The :class:`Meta` of the field ``name`` (``KeyError`` for a name that is not a field)."""
    return _METAS[name]


def per_model_fields() -> tuple[str, ...]:
    """The fields that may differ between runs trained as one stacked model, in field order (a sweep writes
    them into its store, so that the report groups runs into methods without importing torch)."""
    return tuple(name for name, meta in _METAS.items() if meta.per_model)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fail(at: str, meta: Meta, value: Any, hint: str = "") -> ValueError:
    return ValueError(f"{at} must be {meta.allowed()}; got {value!r}{hint}")


def check_field(name: str, value: Any, where: str = "", *, registered: bool = True) -> Any:
    """``value`` as the field ``name`` holds it (ints become floats for float fields, lists tuples, dataset
    names lower case), or a ``ValueError`` naming the field (``where``: the place, e.g. ``"[base]"``) and
    what it allows — the one check of a field's value, whatever it comes from. ``registered=False``
    (a config made in Python) lets a field with ``Meta.open_choices`` name something not registered.

    >>> check_field("weight_decay", 1)
    1.0
    >>> check_field("weight_decay", -0.1, "[grid]")
    Traceback (most recent call last):
    ...
    ValueError: weight_decay in [grid] must be a finite number >= 0; got -0.1
    """
    meta = field_meta(name)
    at = f"{name} in {where}" if where else name
    if value is None and meta.optional:
        return None
    if meta.kind == "bool":
        if not isinstance(value, bool):
            raise _fail(at, meta, value)
        return value
    if meta.kind == "str":
        if not isinstance(value, str) or not value:
            raise ValueError(f"{at} must be a non-empty name{', ' + meta.allowed() if meta.choices else ''}; "
                             f"got {value!r}")
        if name == "dataset":  # names are matched case-insensitively (decaylab.data.load)
            value = value.lower()
        if meta.choices is not None and (registered or not meta.open_choices):
            allowed = tuple(meta.choices())
            if value not in allowed:
                close = difflib.get_close_matches(value, allowed, n=1)
                raise _fail(at, meta, value, f" (did you mean {close[0]!r}?)" if close else "")
        return value
    if meta.kind in ("int", "float"):
        ok = _is_number(value) and math.isfinite(value) and meta.in_range(value)
        if meta.kind == "int":
            ok = ok and isinstance(value, numbers.Integral)
        if not ok:
            raise _fail(at, meta, value)
        return int(value) if meta.kind == "int" else float(value)
    if meta.kind == "strs":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise _fail(at, meta, value)
        return _NORMALIZE[name](tuple(value)) if name in _NORMALIZE else tuple(value)
    # a tuple of numbers
    if not isinstance(value, (list, tuple)) or (meta.length is not None and len(value) != meta.length):
        raise _fail(at, meta, value)
    items = []
    for i, item in enumerate(value):
        if not (_is_number(item) and math.isfinite(item) and meta.in_range(item)):
            raise ValueError(f"{name}[{i}]{f' in {where}' if where else ''} must be a finite number"
                             f"{meta._range_text()}; got {item!r}")
        items.append(float(item))
    return _NORMALIZE[name](tuple(items)) if name in _NORMALIZE else tuple(items)


def _unknown(key: str, where: str, allowed: Sequence[str], what: str) -> ValueError:
    alias = _ALIASES.get(key.lower().replace("-", "_"))
    close = [alias] if alias in allowed else difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown key {key!r} in {where}; allowed: {what} ({', '.join(allowed)}){hint}")


def unknown_key(key: str, where: str, extra: Sequence[str] = ()) -> ValueError:
    """The error for a key that is not a field: where it is, the allowed keys (``extra`` first) and the
    closest match (a field's ``Meta.aliases`` count: ``learning_rate`` → ``lr``)."""
    what = " and ".join([*extra, "TrainConfig fields"])
    return _unknown(key, where, [*extra, *_METAS], what)


def check_fields(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Every key of ``table`` checked to be a field and every value checked by :func:`check_field`
    (a run config file); the knob fields of an older decaylab become their callbacks. Returns the checked
    values."""
    from .callbacks import from_legacy

    out = {}
    for key, value in from_legacy(table).items():
        if key not in _METAS:
            raise unknown_key(key, where)
        out[key] = check_field(key, value, where)
    return out


def parse_value(name: str, text: str) -> Any:
    """The value of field ``name`` from command-line text, by its kind (``3e-3``; ``true``; ``none`` for an
    optional field; numbers as ``0.9,0.95`` or ``[0.9, 0.95]``; strings as ``a;b`` or ``["a", "b"]``),
    checked by :func:`check_field`.

    >>> parse_value("betas", "0.9,0.95"), parse_value("steps", "none"), parse_value("no_decay_bias_norm", "false")
    ((0.9, 0.95), None, False)
    """
    meta = field_meta(name)
    flag = "--" + name
    raw = text.strip()
    value: Any = raw
    if meta.optional and raw.lower() in ("none", "null"):
        value = None
    elif meta.kind == "bool":
        value = {"true": True, "false": False}.get(raw.lower(), raw)
    elif meta.kind in ("int", "float"):
        try:
            value = int(raw) if meta.kind == "int" else float(raw)
        except ValueError:
            pass  # check_field names the field and what it allows
    elif meta.kind == "floats":
        parts = [p for p in raw.strip("[]()").replace(" ", "").split(",") if p]
        try:
            value = [float(p) for p in parts]
        except ValueError:
            pass
    elif meta.kind == "strs":  # a TOML list, or items separated by ';' (a callback's own arguments use ',')
        from decaylab._toml import loads

        value = loads(f"v = {raw}", flag)["v"] if raw.startswith("[") else [p.strip() for p in raw.split(";") if p]
    try:
        return check_field(name, value)
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None


def load_config(path: str | os.PathLike[str] | None = None,
                overrides: Mapping[str, Any] | Sequence[str] = ()) -> TrainConfig:
    """A :class:`TrainConfig` from a TOML file of its fields (or the defaults), then ``overrides``: a
    mapping of checked field values, or ``--field value`` pairs of text (``--weight-decay`` and
    ``--weight_decay`` alike, read by :func:`parse_value`).

    >>> load_config(None, ["--lr", "3e-3", "--model", "mlp", "--betas", "[0.9, 0.95]"]).betas
    (0.9, 0.95)
    """
    from decaylab._toml import read_toml

    values: dict[str, Any] = {}
    if path is not None:
        try:
            table, _ = read_toml(path, "config file")
        except FileNotFoundError as error:
            raise ValueError(str(error)) from None
        values = check_fields(table, f"config file {str(path)!r}")
    if isinstance(overrides, Mapping):
        values.update(overrides)
    else:
        pairs = list(overrides)
        for i in range(0, len(pairs), 2):
            flag = pairs[i]
            if not flag.startswith("--") or i + 1 >= len(pairs):
                raise ValueError(f"overrides must be pairs '--field value'; got {' '.join(pairs[i:])!r}")
            name = flag[2:].replace("-", "_")
            if name not in _METAS:
                raise unknown_key(name, "the command line")
            values[name] = parse_value(name, pairs[i + 1])
    return TrainConfig(**values)


_METAS: dict[str, Meta] = {f.name: f.metadata["meta"] for f in dataclasses.fields(TrainConfig)}
# Names people write for the fields (each field's Meta.aliases), for the did-you-mean of an unknown key.
_ALIASES: dict[str, str] = {alias: name for name, meta in _METAS.items() for alias in meta.aliases}
# The schema, reachable from the class: decaylab.sweep.spec reads it from the config class it is given.
TrainConfig.field_meta = staticmethod(field_meta)
TrainConfig.check_field = staticmethod(check_field)
TrainConfig.unknown_key = staticmethod(unknown_key)
TrainConfig.per_model_fields = staticmethod(per_model_fields)


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _legacy_fields() -> dict[str, Any]:
    from .callbacks import LEGACY_FIELDS

    return dict(LEGACY_FIELDS)


# The knob fields of an older decaylab, which specs and stores may still name (decaylab.train.callbacks).
TrainConfig.legacy_fields = _legacy_fields()
