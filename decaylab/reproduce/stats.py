r"""The statistics, margins and status words of every reproduction, in one place.

A *comparison* of two cells ``a`` and ``b`` (each a list of per-seed values) is decided when the
difference of their means is larger than its spread, ``2·sqrt(s_a²/n_a + s_b²/n_b)`` (about a 95%
interval for the difference, ``s`` the seeds' sample standard deviation): then the claim held or
did not, by the sign; inside the spread it is inconclusive (``None``). A mean against a fixed number
uses ``2·s/sqrt(n)``. Every verdict needs at least :data:`MIN_SEEDS` seeds per cell; with fewer it is
inconclusive and says so.

A verdict's status is one of :data:`STATUSES`: ``HELD`` (True), ``DID NOT HOLD`` (False),
``INCONCLUSIVE`` (None), ``PREMISE NOT MET`` (a premise of the test failed, so the claim was not
judged), or ``REPORTED`` for an entry that states no claim (the demo). A part of a verdict reads in
lower case (:func:`word`).

>>> mean_std([1.0, 2.0, 3.0])
(2.0, 1.0)
>>> a, b = Stat.of([1.0, 1.1, 0.9]), Stat.of([2.0, 2.1, 1.9])
>>> decide(b.mean - a.mean, spread(a, b)), word(None), status(True)
(True, 'inconclusive', 'HELD')
>>> verdict_line("decoupling", False, "separability 0.5 vs 0.9")
'decoupling: DID NOT HOLD — separability 0.5 vs 0.9'
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["MIN_SEEDS", "STATUSES", "PREMISE_NOT_MET", "REPORTED", "Stat", "combine", "decide", "finite_or_none",
           "mean_std", "pm", "spread", "spread_of", "status", "verdict_line", "word"]

MIN_SEEDS = 3
PREMISE_NOT_MET = "PREMISE NOT MET"
REPORTED = "REPORTED"
_WORDS = {True: "HELD", False: "DID NOT HOLD", None: "INCONCLUSIVE"}
#: Every status a verdict can have.
STATUSES = (*_WORDS.values(), PREMISE_NOT_MET, REPORTED)


def status(held: bool | None) -> str:
    """``HELD``, ``DID NOT HOLD`` or ``INCONCLUSIVE``."""
    return _WORDS[held]


def word(held: bool | None) -> str:
    """A part of a verdict: ``held``, ``did not hold`` or ``inconclusive``."""
    return _WORDS[held].lower()


def verdict_line(name: str, held: bool | None, text: str) -> str:
    """The verdict's one line: ``"NAME: HELD — text"`` (``DID NOT HOLD``, ``INCONCLUSIVE``)."""
    return f"{name}: {status(held)} — {text}"


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; ``nan`` for one value) of finite ``values``."""
    xs = [float(v) for v in values]
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def pm(mean: float, std: float, spec: str = ".2f") -> str:
    """``"mean ± std"`` in the format ``spec`` (the mean alone when the std is nan; a ``+`` in
    ``spec`` signs the mean only).

    >>> pm(0.8312, 0.1), pm(0.5, 0.25, "+.1f")
    ('0.83 ± 0.10', '+0.5 ± 0.2')
    """
    if std is None or not math.isfinite(std):
        return format(mean, spec)
    return f"{format(mean, spec)} ± {format(std, spec.replace('+', ''))}"


def finite_or_none(x: float) -> float | None:
    """A number as verdict.json holds it: None for nan and inf."""
    return x if math.isfinite(x) else None


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
        return {"mean": finite_or_none(self.mean), "std": finite_or_none(self.std), "n": self.n}


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
