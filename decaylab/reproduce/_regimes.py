"""What the training-regime reproductions (overtraining, undertraining, bf16) share: reading a
sweep's finished runs by cell, seed statistics, and how a comparison becomes held / not held.

A *comparison* of two cells ``a`` and ``b`` (each a list of per-seed values) is decided when the
difference of their means is larger than its spread, ``2·sqrt(s_a²/n_a + s_b²/n_b)`` (about a 95%
interval for the difference, ``s`` the seeds' sample standard deviation): then the claim held or
did not, by the sign; inside the spread it is inconclusive (``None``). Every verdict needs at least
:data:`MIN_SEEDS` seeds per cell; with fewer it is inconclusive and says so.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decaylab.store import Run, load_curves, load_sweep

MIN_SEEDS = 3


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation and count of per-seed values (non-finite values count as ``inf``)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        xs = [float(v) if v is not None and math.isfinite(float(v)) else math.inf for v in values]
        if not xs:
            return cls(math.nan, math.nan, 0)
        mean = sum(xs) / len(xs)
        if not math.isfinite(mean):
            return cls(mean, math.nan, len(xs))
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        return cls(mean, std, len(xs))

    def text(self, spec: str = ".4f") -> str:
        if not math.isfinite(self.mean):
            return "diverged" if self.mean == math.inf else "n/a"
        return f"{format(self.mean, spec)} ± {format(self.std, spec.replace('+', ''))}"

    def plain(self) -> dict[str, float]:
        return {"mean": _json(self.mean), "std": _json(self.std), "n": self.n}


def spread(a: Stat, b: Stat) -> float:
    """``2·sqrt(s_a²/n_a + s_b²/n_b)``: the margin a difference of means must beat to count."""
    if a.n == 0 or b.n == 0:
        return math.inf
    return 2.0 * math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)


def spread_of(a: Stat) -> float:
    """``2·s/sqrt(n)``: the margin a mean must beat to differ from a fixed number."""
    return 2.0 * a.std / math.sqrt(a.n) if a.n else math.inf


def decide(difference: float, margin: float) -> bool | None:
    """True when ``difference > margin``, False when ``difference < −margin``, else None."""
    if math.isnan(difference) or math.isnan(margin):
        return None
    if difference > margin:
        return True
    if difference < -margin:
        return False
    return None


def combine(parts: Iterable[bool | None]) -> bool | None:
    """Held if every part held, not held if any part did not hold, else inconclusive."""
    parts = list(parts)
    if any(p is False for p in parts):
        return False
    if parts and all(p is True for p in parts):
        return True
    return None


def word(held: bool | None) -> str:
    return {True: "held", False: "did not hold", None: "inconclusive"}[held]


def _json(x: float) -> float | None:
    return x if math.isfinite(x) else None


def finished_runs(store_path: str | Path, sweep: str) -> list[Run]:
    """The sweep's finished runs (status ``done``)."""
    return load_sweep(store_path, sweep).runs


def by_cell(runs: Sequence[Run], key: Callable[[Run], Any]) -> dict[Any, list[Run]]:
    """Runs grouped by ``key(run)`` (a cell: method label, λ, ...), each group sorted by seed."""
    cells: dict[Any, list[Run]] = defaultdict(list)
    for run in runs:
        cells[key(run)].append(run)
    return {k: sorted(v, key=lambda r: r.config.get("seed", 0)) for k, v in cells.items()}


def curves_of(store_path: str | Path, runs: Sequence[Run]) -> dict[int, dict[str, list[tuple[int, float]]]]:
    return load_curves(store_path, [r.id for r in runs])


def at_step(curve: Sequence[tuple[int, float]], step: int) -> float:
    """The curve's value at the evaluation nearest to ``step``."""
    if not curve:
        return math.nan
    return min(curve, key=lambda point: abs(point[0] - step))[1]


def too_few_seeds(cells: dict[Any, list[Run]], needed: Iterable[Any]) -> str | None:
    """A sentence naming the cells with fewer than :data:`MIN_SEEDS` finished seeds, or None."""
    short = [f"{k!s} ({len(cells.get(k, []))})" for k in needed if len(cells.get(k, [])) < MIN_SEEDS]
    if not short:
        return None
    return f"needs at least {MIN_SEEDS} finished seeds per cell; these have fewer: {', '.join(short)}"
