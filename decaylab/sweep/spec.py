r"""Sweep specs: a grid of training runs as a TOML data file that a paper's repository can check in.

A spec names a sweep, fixes the :class:`~decaylab.train.TrainConfig` fields that every run
shares (``[base]``), lists the axes to cross (``[grid]``) and the methods to compare
(``[[methods]]``); every method is crossed with the whole grid::

    name = "demo"                         # the sweep's name in the store
    description = "lr × λ for five decay treatments"   # optional, free text
    max_runs = 20000                      # optional: the most runs it may expand to (see below)

    [base]                                # TrainConfig fields shared by every run
    dataset = "mnist1d"
    model = "mlp"
    epochs = 10
    schedule = "cosine"

    [grid]                                # axes, crossed in this order (the last varies fastest)
    lr = { log = [1e-4, 1e-1], num = 6 }  # 6 log-spaced values, both ends included
    weight_decay = { log = [1e-4, 1], num = 6 }
    seed = [0, 1]                         # or an explicit list

    [[methods]]                           # a label + TrainConfig overrides
    label = "Adam+L2"
    decay = "l2"
    weight_decay = { log = [1e-6, 1e-1], num = 6 }   # a per-method axis replaces the grid's

    [[methods]]
    label = "AdamW (torch)"
    decay = "decoupled"

A value in ``[grid]`` (or a grid-valued entry in a method) is one of

- a list of values: ``seed = [0, 1, 2]``;
- ``{ log = [lo, hi], num = n }``: ``n`` values spaced evenly in ``log(value)`` from ``lo`` to ``hi``
  (both > 0, both included), ``lo·(hi/lo)^(i/(n−1))`` for ``i = 0 … n−1``;
- ``{ linear = [lo, hi], num = n }``: ``n`` values spaced evenly from ``lo`` to ``hi``;
- ``{ range = n }`` or ``{ range = [start, stop] }``: the integers ``start … stop−1``, as Python's
  ``range`` (for seeds).

Helper values are rounded to 6 significant digits so that a run's identity
(:meth:`TrainConfig.key`, a hash of its fields) is the same on every machine.

In a method, a plain value overrides ``[base]`` and removes the grid axis of the same name (so
``weight_decay = 0`` makes a no-decay baseline with one run per lr and seed, not six copies); a
list or helper table replaces (or adds) that axis for this method only. ``betas`` is a pair, so
``betas = [0.9, 0.99]`` is one value and ``betas = [[0.9, 0.99], [0.9, 0.999]]`` an axis.

A reproduction's spec (:mod:`decaylab.reproduce`) may carry a ``[claim]`` table: the thresholds,
premises and the most seeds of its test, fixed in advance beside the runs they judge (the sweep
itself ignores it; the reproduction checks its keys). It is part of the spec's text, so a changed
threshold is a new version of the sweep in the store.

``steps`` and ``grad_clip`` default to none: leave them out for none (TOML has no null).

Size: the number of runs is counted before anything is expanded; a spec may expand to at most
:data:`MAX_RUNS` (100,000) runs, and a sweep of more than :data:`CONFIRM_RUNS` (5,000) needs
``--yes`` (``run_sweep(yes=True)``) unless the spec's ``max_runs`` covers it. ``max_runs`` is also
a cap: a spec that expands to more runs than its ``max_runs`` is an error.

Every key and value is checked before anything runs, against the config class's own schema
(:mod:`decaylab.train.config`: each field's metadata states its type, choices and range once): an
unknown key raises a ``ValueError`` that names it, its section, the allowed keys and the closest
match; a bad value names the field, where it is, and what it may be.

>>> spec = load_spec('''
... name = "tiny"
... [base]
... epochs = 2
... [grid]
... lr = { log = [1e-3, 1e-1], num = 3 }
... [[methods]]
... label = "AdamW"
... decay = "decoupled"
... ''')
>>> [(label, c.lr) for label, c in spec.configs()]
[('AdamW', 0.001), ('AdamW', 0.01), ('AdamW', 0.1)]
>>> load_spec('name = "x"\n[grid]\nlearning_rate = [0.1]')
Traceback (most recent call last):
...
ValueError: unknown key 'learning_rate' in [grid]; allowed: TrainConfig fields (dataset, ...) (did you mean 'lr'?)
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from decaylab import _toml

__all__ = ["Spec", "load_spec", "find_spec", "available_specs", "log_grid", "linear_grid", "TOP_LEVEL_KEYS",
           "GRID_HELPERS", "MAX_RUNS", "CONFIRM_RUNS"]

TOP_LEVEL_KEYS = ("name", "description", "base", "grid", "methods", "max_runs", "claim")
METHOD_KEYS = ("label",)
GRID_HELPERS = ("log", "linear", "range")
SIGNIFICANT_DIGITS = 6
#: The most runs one spec may expand to: its configs are held in memory and registered in the store
#: before the first run trains (10⁵ runs take about 0.5 GB and 100 MB of store).
MAX_RUNS = 100_000
#: A sweep of more runs than this needs a confirmation (``--yes``, or ``max_runs`` in the spec).
CONFIRM_RUNS = 5_000
SPECS_DIR = Path(__file__).parent / "specs"


def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def log_grid(low: float, high: float, num: int) -> list[float]:
    r"""``num`` values from ``low`` to ``high`` (both included), evenly spaced in ``log(value)``.

    ``value_i = low·(high/low)^(i/(num−1))``, rounded to 6 significant digits (the ends are exact).

    >>> log_grid(1e-4, 1e-1, 4)
    [0.0001, 0.001, 0.01, 0.1]
    >>> log_grid(1e-4, 1e-1, 6)
    [0.0001, 0.000398107, 0.00158489, 0.00630957, 0.0251189, 0.1]
    """
    _check_helper_args("log", low, high, num, positive=True)
    if num == 1:
        return [float(low)]
    lo, hi = math.log10(low), math.log10(high)
    inner = [_round(10 ** (lo + (hi - lo) * i / (num - 1))) for i in range(1, num - 1)]
    return [float(low), *inner, float(high)]


def linear_grid(low: float, high: float, num: int) -> list[float]:
    """``num`` values from ``low`` to ``high`` (both included), evenly spaced, rounded to 6 digits.

    >>> linear_grid(0.0, 0.5, 3)
    [0.0, 0.25, 0.5]
    """
    _check_helper_args("linear", low, high, num, positive=False)
    if num == 1:
        return [float(low)]
    inner = [_round(low + (high - low) * i / (num - 1)) for i in range(1, num - 1)]
    return [float(low), *inner, float(high)]


def _check_helper_args(helper: str, low: Any, high: Any, num: Any, *, positive: bool, where: str = "") -> None:
    at = f" in {where}" if where else ""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"{helper} grid{at}: num must be an integer >= 1, got {num!r}")
    if num > MAX_RUNS:  # checked before a list of num values is made: num = 10**12 would never finish
        raise ValueError(f"{helper} grid{at}: num must be at most {MAX_RUNS:,} (the most runs a sweep may have), "
                         f"got {num:,}")
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{helper} grid{at}: bounds must be finite numbers, got {name}={value!r}")
        if positive and value <= 0:
            raise ValueError(f"{helper} grid{at}: bounds must be > 0 (log spacing), got {name}={value!r}")
    if num > 1 and low == high:
        raise ValueError(f"{helper} grid{at}: bounds are equal ({low!r}), so num={num} values would repeat; "
                         "use num = 1 or different bounds")


# ----------------------------------------------------------------------------------------------
# The run config's schema


def _default_config_class() -> type:
    from decaylab.train import TrainConfig

    return TrainConfig


@dataclass(frozen=True)
class _Schema:
    """What the spec needs to know of the run config class: its field names, the check of one value
    (``check(name, value, where)``), which fields hold a tuple (so that a list of lists is an axis), and
    the error for an unknown key. TrainConfig states all of it itself (``decaylab.train.config``)."""

    names: list[str]
    check: Callable[[str, Any, str], Any]
    is_tuple: Callable[[str], bool]
    unknown: Callable[..., ValueError]


def _schema(config_class: type) -> _Schema:
    if not is_dataclass(config_class):
        raise TypeError(f"config_class must be a dataclass (decaylab.train.TrainConfig), got {config_class!r}")
    names = [f.name for f in fields(config_class) if f.init]
    meta = getattr(config_class, "field_meta", None)
    if meta is not None:  # TrainConfig: its own metadata says everything
        # Fields an older decaylab had (knobs that are callbacks now): accepted as they were, checked when the
        # run's config is made from them (TrainConfig.from_dict maps them).
        legacy = dict(getattr(config_class, "legacy_fields", {}))

        def check(name: str, value: Any, where: str) -> Any:
            if name in legacy:
                return tuple(value) if isinstance(value, list) else value
            return config_class.check_field(name, value, where)

        def is_tuple(name: str) -> bool:
            return isinstance(legacy[name], tuple) if name in legacy else meta(name).kind in ("floats", "strs")

        return _Schema([*names, *legacy], check, is_tuple, config_class.unknown_key)
    # A stand-in config class (tests written from the contract): its defaults' types; its constructor checks.
    defaults = {f.name: f.default for f in fields(config_class) if f.init and f.default is not MISSING}

    def check(name: str, value: Any, where: str) -> Any:
        return tuple(value) if isinstance(defaults.get(name), tuple) and isinstance(value, list) else value

    def unknown(key: str, where: str, extra: Iterable[str] = ()) -> ValueError:
        allowed = [*extra, *names]
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return ValueError(f"unknown key {key!r} in {where}; allowed: {', '.join(allowed)}{hint}")

    return _Schema(names, check, lambda name: isinstance(defaults.get(name), tuple), unknown)


# ----------------------------------------------------------------------------------------------
# The spec


@dataclass
class Spec:
    """A parsed, validated sweep spec. :meth:`configs` expands it into runs.

    ``name``: the sweep's name in the store; ``text``: the TOML source (stored with the runs);
    ``methods``: the labels in file order; ``path``: the file it came from, if any; ``max_runs``:
    the spec's own confirmation of its size (None when it gives none); ``claim``: the ``[claim]``
    table of a reproduction's spec (thresholds fixed in advance; empty when it has none).
    """

    name: str
    text: str
    description: str = ""
    path: Path | None = None
    max_runs: int | None = None
    methods: list[str] = field(default_factory=list)
    claim: dict[str, Any] = field(default_factory=dict)
    _runs: list[tuple[str, Any]] = field(default_factory=list, repr=False)

    def configs(self) -> list[tuple[str, Any]]:
        """Every run as ``(method label, TrainConfig)``: methods in file order, each crossed with
        its grid in axis order (the last axis varies fastest)."""
        return list(self._runs)

    def __len__(self) -> int:
        return len(self._runs)

    def seeds(self) -> list[int]:
        """The seeds of the runs, in order."""
        return sorted({config.seed for _, config in self._runs})

    def with_seeds(self, seeds: Iterable[int]) -> Spec:
        r"""The same cells with the seed axis ``seeds`` (a reproduction adding seeds until its verdict is
        decided). The text gets one comment line saying so, so the store records it as a new version;
        the runs the store holds keep their labels.

        >>> spec = load_spec('name = "s"\n[grid]\nlr = [0.1, 0.2]\nseed = [0, 1]')
        >>> more = spec.with_seeds(range(4))
        >>> len(spec), len(more), more.seeds()
        (4, 8, [0, 1, 2, 3])
        """
        seeds = sorted({int(seed) for seed in seeds})
        if not seeds:
            raise ValueError("seeds must name at least one seed")
        cells: dict[tuple[str, str], tuple[str, Any]] = {}
        for label, config in self._runs:
            values = config.to_dict()
            values.pop("seed", None)
            cells.setdefault((label, json.dumps(values, sort_keys=True, default=str)), (label, config))
        runs = [(label, type(config).from_dict({**config.to_dict(), "seed": seed}))
                for label, config in cells.values() for seed in seeds]
        note = f"# seeds {seeds[0]}…{seeds[-1]} ({len(seeds)}): added until the verdict was decided"
        text = self.text.rstrip("\n") + f"\n{note}\n"
        return dataclasses.replace(self, text=text, _runs=runs)


def load_spec(source: str | os.PathLike[str], *, config_class: type | None = None) -> Spec:
    """Read and validate a sweep spec from a ``.toml`` file path or from TOML text.

    A :class:`~pathlib.Path`, or a string without a newline or ``=``, is a path; any other string is
    the spec's text. ``config_class`` is the run config dataclass (default
    :class:`decaylab.train.TrainConfig`).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not UTF-8, the TOML does not parse, a key or value is not allowed (the
            message names it, where it is, and what is allowed), or the spec expands to more than
            :data:`MAX_RUNS` runs (or its own ``max_runs``); the count comes before any expansion.
    """
    path: Path | None = None
    if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source and "=" not in source):
        path = Path(source)
        data, text = _toml.read_toml(path, "sweep spec file")
    elif isinstance(source, str):
        text = source
        data = _toml.loads(text, "the sweep spec")
    else:
        raise TypeError(f"load_spec takes a path or TOML text, got {type(source).__name__}")
    return _build(data, text, path, config_class or _default_config_class())


def available_specs() -> list[str]:
    """The names of the specs shipped in ``decaylab/sweep/specs/`` (``decaylab sweep demo``)."""
    return sorted(p.stem for p in SPECS_DIR.glob("*.toml"))


def find_spec(name_or_path: str | os.PathLike[str]) -> Path:
    """A spec file: ``name_or_path`` itself if it is a file, else the shipped spec of that name.

    >>> find_spec("demo").name
    'demo.toml'
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SPECS_DIR / f"{path.name}.toml"
    if path.suffix == "" and path.name == os.fspath(name_or_path) and shipped.is_file():
        return shipped
    raise FileNotFoundError(f"sweep spec file {os.fspath(name_or_path)!r} does not exist (the checked-in specs: "
                            f"{', '.join(available_specs()) or 'none'})")


def _unknown_key(key: str, section: str, allowed: Iterable[str]) -> ValueError:
    """The error for a key of the spec's own (not a config field): the allowed keys and the closest match."""
    allowed = list(allowed)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown key {key!r} in {section}; allowed: {', '.join(allowed)}{hint}")


def _is_axis(schema: _Schema, name: str, value: Any) -> bool:
    """Whether a method's value is a grid axis (a list or a helper table) rather than one value."""
    if isinstance(value, dict):
        return True
    if isinstance(value, list):
        if schema.is_tuple(name):  # one tuple, or a list of them
            return bool(value) and all(isinstance(v, list) for v in value)
        return True
    return False


def _axis(schema: _Schema, name: str, value: Any, where: str) -> list[Any]:
    """The values of one grid axis, each checked."""
    at = f"{name} in {where}"
    if isinstance(value, dict):
        helpers = [k for k in value if k in GRID_HELPERS]
        for key in value:
            if key not in (*GRID_HELPERS, "num"):
                raise _unknown_key(key, f"the grid helper for {at}", (*GRID_HELPERS, "num"))
        if len(helpers) != 1:
            raise ValueError(f"{at}: a grid helper table needs exactly one of {', '.join(GRID_HELPERS)} "
                             f"(e.g. {{ log = [1e-4, 1e-1], num = 6 }}), got keys {sorted(value)}")
        helper = helpers[0]
        bounds = value[helper]
        if helper == "range":
            if "num" in value:
                raise ValueError(f"{at}: range takes no num; write {{ range = n }} or {{ range = [start, stop] }}")
            if isinstance(bounds, int) and not isinstance(bounds, bool):
                start, stop = 0, bounds
            elif (isinstance(bounds, list) and len(bounds) == 2
                  and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)):
                start, stop = bounds
            else:
                raise ValueError(f"{at}: range must be an integer n or a pair of integers [start, stop], "
                                 f"got {bounds!r}")
            if stop <= start:
                raise ValueError(f"{at}: range {bounds!r} is empty (stop must be greater than start)")
            if stop - start > MAX_RUNS:  # counted before a list is made: range = 10**20 would never finish
                raise ValueError(f"{at}: range {bounds!r} has {stop - start:,} values; a sweep may have at most "
                                 f"{MAX_RUNS:,} runs")
            values: list[Any] = list(range(start, stop))
        else:
            if not isinstance(bounds, list) or len(bounds) != 2:
                raise ValueError(f"{at}: {helper} must be a pair [low, high], got {bounds!r}")
            if "num" not in value:
                raise ValueError(f"{at}: the {helper} helper needs num (how many values), e.g. num = 6")
            _check_helper_args(helper, bounds[0], bounds[1], value["num"], positive=helper == "log", where=at)
            values = (log_grid if helper == "log" else linear_grid)(bounds[0], bounds[1], value["num"])
    elif isinstance(value, list):
        if not value:
            raise ValueError(f"{at}: a grid axis needs at least one value, got []")
        values = value
    else:
        values = [value]
    checked = [schema.check(name, v, where) for v in values]
    seen: list[Any] = []
    for v in checked:
        if v in seen:
            raise ValueError(f"{at}: the value {v!r} appears twice; every grid value must be distinct")
        seen.append(v)
    return checked


def _build(data: dict[str, Any], text: str, path: Path | None, config_class: type) -> Spec:
    schema = _schema(config_class)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise _unknown_key(key, "the top level of the spec", TOP_LEVEL_KEYS)
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name (the sweep's name in the store) must be a non-empty string at the top level of "
                         f"the spec, got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"description must be a string, got {description!r}")
    for section in ("base", "grid"):
        if section in data and not isinstance(data[section], dict):
            raise ValueError(f"[{section}] must be a table of TrainConfig fields, got {data[section]!r}")
    claim = data.get("claim", {})
    if not isinstance(claim, dict):
        raise ValueError(f"[claim] must be a table (a reproduction's thresholds and premises), got {claim!r}")

    base: dict[str, Any] = {}
    for key, value in data.get("base", {}).items():
        if key not in schema.names:
            raise schema.unknown(key, "[base]")
        if _is_axis(schema, key, value):
            raise ValueError(f"{key} in [base] must be one value, got {value!r}; put several values in [grid]")
        base[key] = schema.check(key, value, "[base]")

    grid: dict[str, list[Any]] = {}
    for key, value in data.get("grid", {}).items():
        if key not in schema.names:
            raise schema.unknown(key, "[grid]")
        if key in base:
            raise ValueError(f"{key} is set in both [base] and [grid]; keep it in one of them")
        grid[key] = _axis(schema, key, value, "[grid]")

    max_runs = data.get("max_runs")
    if max_runs is not None and (isinstance(max_runs, bool) or not isinstance(max_runs, int)
                                 or not 1 <= max_runs <= MAX_RUNS):
        raise ValueError(f"max_runs (the most runs the spec may expand to) must be an integer from 1 to "
                         f"{MAX_RUNS:,}, got {max_runs!r}")

    methods = data.get("methods", [{"label": name}])
    if not isinstance(methods, list) or not methods or not all(isinstance(m, dict) for m in methods):
        raise ValueError("methods must be one or more [[methods]] tables, each with a label")
    labels: list[str] = []
    plans: list[tuple[str, str, dict[str, Any], dict[str, list[Any]]]] = []
    for i, method in enumerate(methods):
        label = method.get("label")
        where = f"methods[{i}]"
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"label in {where} must be a non-empty string (the method's name in the report), "
                             f"got {label!r}")
        if label in labels:
            raise ValueError(f"label {label!r} in {where} is used by an earlier method; labels must be unique")
        labels.append(label)
        where = f"{where} ({label!r})"
        fixed = dict(base)
        axes = dict(grid)
        for key, value in method.items():
            if key in METHOD_KEYS:
                continue
            if key not in schema.names:
                raise schema.unknown(key, where, METHOD_KEYS)
            if _is_axis(schema, key, value):
                axes[key] = _axis(schema, key, value, where)
                fixed.pop(key, None)
            else:
                fixed[key] = schema.check(key, value, where)
                axes.pop(key, None)
        plans.append((label, where, fixed, axes))
    # Counted before any run is made: a 1000 × 1000 grid is refused at once, not after minutes and gigabytes.
    sizes = {label: math.prod(len(values) for values in axes.values()) for label, _, _, axes in plans}
    total = sum(sizes.values())
    cap, what = (max_runs, "its max_runs") if max_runs is not None else (MAX_RUNS, "the most a sweep may have")
    if total > cap:
        per_method = ", ".join(f"{label!r} {n:,}" for label, n in list(sizes.items())[:5])
        raise ValueError(f"the spec expands to {total:,} runs ({per_method}{', ...' if len(sizes) > 5 else ''}), "
                         f"more than {cap:,}, {what}; use fewer grid values, or split it into several specs")
    runs: list[tuple[str, Any]] = []
    owner: dict[str, str] = {}
    for label, where, fixed, axes in plans:
        names = list(axes)
        for combo in itertools.product(*(axes[n] for n in names)):
            values = {**fixed, **dict(zip(names, combo, strict=True))}
            try:
                make = getattr(config_class, "from_dict", None)
                config = make(values) if make is not None else config_class(**values)
            except (TypeError, ValueError) as error:
                point = f", at {dict(zip(names, combo, strict=True))}" if names else ""
                raise ValueError(f"{error} (in {where}{point})") from error
            key = config.key()
            if key in owner:
                raise ValueError(f"methods {owner[key]!r} and {label!r} both produce the run {values}; "
                                 "each run must belong to one method (give them different settings)")
            owner[key] = label
            runs.append((label, config))
    return Spec(name=name, text=text, description=description, path=path, max_runs=max_runs, methods=labels,
                claim=dict(claim), _runs=runs)
