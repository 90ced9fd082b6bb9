r"""The statistics, margins and status words of every reproduction, in one place.

A *comparison* of two cells ``a`` and ``b`` (each a list of per-seed values) is decided when the
difference of their means is larger than its spread, ``2·sqrt(s_a²/n_a + s_b²/n_b)`` (about a 95%
interval for the difference, ``s`` the seeds' sample standard deviation): then the claim held or
did not, by the sign; inside the spread it is inconclusive (``None``). A mean against a fixed number
uses ``2·s/sqrt(n)``. Every verdict needs at least :data:`MIN_SEEDS` seeds per cell; with fewer it is
inconclusive and says so.

A claim judged against a **threshold fixed in advance** (in the spec's ``[claim]`` table) uses a
*paired* comparison: each seed gives one effect (e.g. ``|slope_L2| − |slope_AdamW|`` of that seed's
grids), :func:`interval` is the mean effect ± ``t_{0.975, n−1}·s/sqrt(n)`` (Student's t, the 95%
interval a reviewer expects from few seeds), and :func:`against` decides: HELD when the whole
interval lies above the threshold, DID NOT HOLD when it lies wholly below, else undecided — and
:meth:`~decaylab.reproduce.core.Reproduction.run` adds seeds (stacked, so cheap) until it is
decided or the spec's ``max_seeds`` is reached. A :class:`Premise` is a measured condition of the
regime the claim needs (train accuracy, a plateau, integrated decay, an optimum inside its grid); a
premise not met makes the status PREMISE NOT MET, never a verdict.

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
>>> effect = interval([0.6, 0.8, 0.7])
>>> round(effect.low, 3), round(effect.high, 3), against(effect, 0.3), against(effect, 0.9)
(0.452, 0.948, True, None)
>>> Premise.at_least("train accuracy", 0.995, 0.99).text()
'train accuracy 0.995 ≥ 0.99: met'
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MIN_SEEDS", "Interval", "Premise", "against", "interval", "log_slope", "premises_line", "row_optimum",
           "t_quantile", "within",
           "STATUSES", "PREMISE_NOT_MET", "REPORTED", "Stat", "combine", "decide", "finite_or_none",
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


def t_quantile(n: int, level: float = 0.95) -> float:
    """The two-sided Student-t quantile for ``n`` values (``n − 1`` degrees of freedom): the
    factor of ``s/sqrt(n)`` in a ``level`` interval of a mean (``inf`` for fewer than 2 values).

    >>> round(t_quantile(3), 3), round(t_quantile(10), 3)
    (4.303, 2.262)
    """
    if n < 2:
        return math.inf
    from scipy.stats import t  # scipy comes with scikit-learn

    return float(t.ppf(0.5 + level / 2, n - 1))


@dataclass(frozen=True)
class Interval:
    """The mean of per-seed values (paired effects) with its ``t``-interval: ``mean ± half``."""

    mean: float
    half: float
    n: int
    std: float

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def scaled(self, k: float) -> Interval:
        """The same interval in other units (``k = 100``: fractions as points)."""
        return Interval(k * self.mean, k * self.half, self.n, k * self.std)

    def text(self, spec: str = "+.2f") -> str:
        """``"+0.70 ± 0.25 (95% t-interval, 3 seeds)"``."""
        if not math.isfinite(self.mean):
            return "n/a"
        half = format(self.half, spec.replace("+", "")) if math.isfinite(self.half) else "∞"
        return f"{format(self.mean, spec)} ± {half} (95% t-interval, {self.n} seeds)"

    def plain(self) -> dict[str, float | int | None]:
        return {"mean": finite_or_none(self.mean), "half_width": finite_or_none(self.half),
                "std": finite_or_none(self.std), "n": self.n, "level": 0.95}


def interval(values: Iterable[float], level: float = 0.95) -> Interval:
    """The mean of the finite ``values`` and its ``level`` Student-t half width (``inf`` with < 2 values)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    mean, std = mean_std(xs)
    half = t_quantile(len(xs), level) * std / math.sqrt(len(xs)) if len(xs) >= 2 else math.inf
    return Interval(mean, half, len(xs), std)


def against(effect: Interval, threshold: float) -> bool | None:
    """True when the whole interval lies above ``threshold``, False when it lies wholly below, else
    None (undecided: more seeds narrow it)."""
    if effect.n < MIN_SEEDS or not (math.isfinite(effect.low) and math.isfinite(effect.high)):
        return None
    if effect.low > threshold:
        return True
    if effect.high < threshold:
        return False
    return None


def within(effect: Interval, margin: float) -> bool | None:
    """An equivalence test ("they tie"): True when the whole interval lies inside ``(−margin, margin)``,
    False when it lies wholly outside (the difference is larger than the margin, one way or the other),
    else None (undecided: more seeds narrow it). This is two one-sided tests, each at half the
    interval's error rate (2.5 % each for the 95 % interval: stricter than the usual 90 % TOST). An
    interval that merely contains 0 is a failure to detect a difference, not a tie.

    >>> [within(interval(x), 1.0) for x in ([0.1, -0.1, 0.0], [3.0, 3.2, 2.9], [0.5, -0.6, 0.9])]
    [True, False, None]
    """
    if margin <= 0:
        raise ValueError(f"margin must be > 0; got {margin!r}")
    if effect.n < MIN_SEEDS or not (math.isfinite(effect.low) and math.isfinite(effect.high)):
        return None
    if -margin < effect.low and effect.high < margin:
        return True
    if effect.low >= margin or effect.high <= -margin:
        return False
    return None


@dataclass(frozen=True)
class Premise:
    """A measured condition of the regime a claim needs: ``name``, the measured ``value``, the
    ``threshold`` it is held to, whether it ``held``, and ``detail`` (how it was measured, in words).
    :meth:`at_least` / :meth:`at_most` compare a number to its threshold; the constructor takes any
    ``held`` (for a condition that is not one comparison)."""

    name: str
    value: float | int | str | None
    threshold: float | int | str | None
    held: bool
    detail: str = ""
    relation: str = ""

    @classmethod
    def at_least(cls, name: str, value: float, threshold: float, detail: str = "") -> Premise:
        value = float(value)
        return cls(name, value, threshold, bool(math.isfinite(value) and value >= threshold), detail, "≥")

    @classmethod
    def at_most(cls, name: str, value: float, threshold: float, detail: str = "") -> Premise:
        value = float(value)
        return cls(name, value, threshold, bool(math.isfinite(value) and value <= threshold), detail, "≤")

    def text(self) -> str:
        """``"train accuracy 0.995 ≥ 0.99: met"`` (``NOT MET`` when it failed)."""
        def show(v: Any) -> str:
            return f"{v:.4g}" if isinstance(v, float) else str(v)

        compared = f"{show(self.value)} {self.relation or 'vs'} {show(self.threshold)}"
        return f"{self.name} {compared}: {'met' if self.held else 'NOT MET'}"

    def plain(self) -> dict[str, Any]:
        value = finite_or_none(self.value) if isinstance(self.value, float) else self.value
        return {"name": self.name, "value": value, "threshold": self.threshold, "held": self.held,
                "relation": self.relation, "detail": self.detail}


def premises_line(premises: Iterable[Premise]) -> str:
    """The failed premises, or every premise when all held: ``"; "``-joined :meth:`Premise.text`."""
    premises = list(premises)
    failed = [p for p in premises if not p.held]
    return "; ".join(p.text() for p in (failed or premises))


def row_optimum(lams: Sequence[float], losses: Sequence[float]) -> float | None:
    """The λ minimizing ``losses`` over the grid ``lams`` (increasing, evenly spaced in ``log λ``),
    refined by the vertex of the parabola through the best point and its two neighbours; None when
    the best point is an end of the grid (the optimum is not inside it). Non-finite losses (diverged
    runs) count as the worst.

    >>> round(row_optimum([0.1, 0.2, 0.4, 0.8], [3.0, 2.0, 2.0, 3.0]), 6)   # halfway between 0.2 and 0.4
    0.282843
    >>> row_optimum([0.1, 0.2, 0.4], [1.0, 2.0, 3.0]) is None
    True
    """
    ys = [y if y is not None and math.isfinite(y) else math.inf for y in losses]
    i = min(range(len(ys)), key=ys.__getitem__)
    if i in (0, len(ys) - 1) or not math.isfinite(ys[i]):
        return None
    x = [math.log(v) for v in lams[i - 1:i + 2]]
    y0, y1, y2 = ys[i - 1:i + 2]
    curvature = y0 - 2 * y1 + y2
    if not (math.isfinite(curvature) and curvature > 0):
        return lams[i]
    h = (x[2] - x[0]) / 2
    return math.exp(x[1] - h * (y2 - y0) / (2 * curvature))


def log_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of ``log y`` against ``log x`` (``nan`` with fewer than 2 distinct ``x``).

    >>> round(log_slope([0.01, 0.02, 0.04], [4.0, 2.0, 1.0]), 9)   # y ∝ 1/x
    -1.0
    """
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    if len(set(lx)) < 2:
        return math.nan
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)
