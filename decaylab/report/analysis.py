r"""The lr × λ grid of a method and the numbers the report states about it.

A method's runs (one method label; seeds averaged) form a matrix ``E[i, j]``: the mean over seeds
of the sweep's selection metric (validation error ``1 − val_acc`` by default, lower is better; a store
from before runs recorded validation: test error ``1 − test_acc``) at learning rate
``lr_i`` (rows, ascending) and weight decay ``λ_j`` (columns, ascending). A cell no run filled is
``nan`` (missing); a cell where a seed ended with a non-finite metric is ``inf`` (diverged). What
selects (the best cell, the good region, the best λ of each lr) reads ``E``; the test accuracy is
reported for the selected cell only (``acc_mean``), so the number that picks a cell is not the one
that judges it.

Three numbers say how the good region of the grid is shaped (AdamW paper, Fig. 2: with L2 it is a
diagonal band, with decoupled decay an axis-aligned block, so lr and λ can be tuned one at a time):

``separability`` (the rectangle score)
    The good region is ``G = {(i, j) : E[i, j] ≤ E_min + δ}`` with ``E_min`` the best cell and ``δ``
    a tolerance (1 percentage point of test error by default). ``rows(G)`` and ``cols(G)`` are the
    learning rates and weight decays that occur in ``G``. Then
    ``separability = |G| / |observed cells of rows(G) × cols(G)|``: 1.0 when ``G`` is a full
    rectangle (a product set ``{good lr} × {good λ}``), ``1/n`` for a one-cell-wide diagonal across
    ``n`` rows. Missing cells of the rectangle are not counted against it. A ``G`` of one row or one
    column scores 1.0 trivially: read the score with the size of ``G``. A smooth additive surface
    ``f(lr) + g(λ)`` has a level set shaped like an axis-aligned ellipse, not a rectangle: it scores
    about π/4 ≈ 0.8 on a fine grid and 5/9 when ``G`` is a plus of 5 cells; a band of width ``w``
    along the diagonal scores about ``w/n``.

``diagonal_slope``
    For each learning rate whose best cell is no worse than the median cell of the grid (rows where
    every λ fails say nothing about the best λ), ``λ*(lr)`` is the weight decay of its best cell;
    the slope is the least-squares slope of ``log10 λ*`` against ``log10 lr`` (rows whose best λ is
    0 are left out; ``nan`` with fewer than two rows). ``0``: the best λ does not depend on lr
    (axis-aligned). ``−1``: ``λ* ∝ 1/lr``, a fixed product ``lr·λ`` is best — what coupled L2 shows,
    and what decoupled decay shows on a λ axis in torch's convention (``decay_scale="lr"``, decay
    per step ``lr_t·λ``) when the best per-step decay does not depend on lr. ``+1``: ``λ* ∝ lr``.
    Changing the λ axis from torch's convention to the paper's (``λ_paper = lr·λ_torch``) adds 1 to
    the slope, so the same decoupled runs read ``−1`` in one convention and ``0`` in the other.
    Optima clamped at the edge of the grid flatten the slope toward 0.

``additivity``
    The fraction of the variance of ``E`` over observed cells that an additive model
    ``E[i, j] ≈ a_i + b_j`` explains (least squares; diverged cells count as the worst finite cell).
    1.0 when the error is a sum of an lr effect and a λ effect (then the best λ is the same for every
    lr); it needs no tolerance ``δ``. Far-off cells (divergence at large lr·λ, say) weigh as much as the
    good region. ``nan`` for fewer than two rows or columns, or too few cells to leave a residual.

>>> import numpy as np
>>> x = np.log10([1e-4, 1e-3, 1e-2])                       # the same grid for lr and λ
>>> axis_aligned = 0.05 + (x[:, None] + 3) ** 2 + (x[None, :] + 3) ** 2
>>> diagonal = 0.05 + (x[:, None] + x[None, :] + 6) ** 2  # best where lr·λ = 1e-6
>>> separability(axis_aligned, 0.01), separability(diagonal, 0.01)
(1.0, 0.3333333333333333)
>>> round(diagonal_slope(axis_aligned, [1e-4, 1e-3, 1e-2], [1e-4, 1e-3, 1e-2]), 6)
0.0
>>> round(diagonal_slope(diagonal, [1e-4, 1e-3, 1e-2], [1e-4, 1e-3, 1e-2]), 6)
-1.0
>>> round(additivity(axis_aligned), 6), round(additivity(diagonal), 3)
(1.0, 0.2)
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..store import Run
from ..store.schema import PER_MODEL_BEFORE_V3

__all__ = [
    "MethodGrid", "choose_metric", "metric_value", "is_error", "accuracy_of", "build_grids", "good_region",
    "separability",
    "diagonal_slope", "additivity", "method_summary",
]

# Default metrics in order of preference when the caller names none.
METRIC_PREFERENCE = ("val_error", "val_loss", "test_error", "test_loss")


@dataclass
class MethodGrid:
    """One method's lr × λ grid, seeds averaged.

    ``error[i, j]`` is the mean metric at ``lrs[i]``, ``weight_decays[j]`` (``nan`` missing, ``inf``
    diverged); ``std`` its standard deviation over seeds (ddof 1; ``nan`` for one seed), ``seeds`` the
    number of runs per cell, ``acc_mean``/``acc_std`` the same for ``test_acc`` (``nan`` where runs
    record none), and ``run_ids[(i, j)]`` the store ids of the runs of a cell.
    """

    name: str
    label: str
    lrs: np.ndarray
    weight_decays: np.ndarray
    error: np.ndarray
    std: np.ndarray
    seeds: np.ndarray
    acc_mean: np.ndarray
    acc_std: np.ndarray
    run_ids: dict[tuple[int, int], list[int]]
    config: dict[str, Any] = field(default_factory=dict)  # the fields all its runs share

    @property
    def best(self) -> tuple[int, int] | None:
        """``(i, j)`` of the best finite cell (first in lr-then-λ order on ties), ``None`` if none."""
        finite = np.isfinite(self.error)
        if not finite.any():
            return None
        masked = np.where(finite, self.error, np.inf)
        return tuple(int(k) for k in np.unravel_index(int(np.argmin(masked)), masked.shape))


def metric_value(final: dict[str, Any], metric: str) -> float | None:
    """A run's value of ``metric`` (``X_error`` is ``1 − X_acc``: ``val_error``, ``test_error``); ``None``
    if it lacks it.

    Non-finite values (a diverged run), and ``null`` (how the store writes them), come back as ``inf``.
    """
    key = accuracy_of(metric) if is_error(metric) else metric
    if key not in final:
        return None
    if final[key] is None:  # decaylab.sweep stores a non-finite metric as JSON null
        return math.inf
    try:
        value = float(final[key])
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return math.inf
    return 1.0 - value if is_error(metric) else value


def is_error(metric: str) -> bool:
    """Whether ``metric`` is an error rate ``1 − X_acc`` (``val_error``, ``test_error``)."""
    return metric.endswith("_error")


def accuracy_of(metric: str) -> str:
    """The accuracy an error metric is read from: ``val_error`` → ``val_acc``."""
    return metric[: -len("_error")] + "_acc"


def choose_metric(runs: Sequence[Run], metric: str | None = None) -> str:
    """The metric that selects (and the heatmaps show): ``metric`` if given, else the first of
    ``val_error`` (needs ``val_acc``), ``val_loss``, ``test_error``, ``test_loss`` that every run records
    (validation first: a store from before runs recorded it selects on test, as its report always did)."""
    if metric is not None:
        missing = [run.id for run in runs if metric_value(run.final, metric) is None]
        if missing:
            have = sorted({key for run in runs for key in run.final})
            raise ValueError(
                f"metric {metric!r} is missing from the final results of {len(missing)} run(s) (e.g. run "
                f"{missing[0]}); runs record: {', '.join(have)} (X_error means 1 − X_acc)"
            )
        if metric.endswith("_acc"):
            raise ValueError(f"metric must be lower-is-better; for {metric!r} use "
                             f"{metric[:-len('_acc')] + '_error'!r} (1 − {metric})")
        return metric
    for name in METRIC_PREFERENCE:
        if all(metric_value(run.final, name) is not None for run in runs):
            return name
    have = sorted({key for run in runs for key in run.final})
    raise ValueError(
        f"the finished runs share none of the metrics {', '.join(METRIC_PREFERENCE)} "
        f"(X_error needs X_acc); they record: {', '.join(have) or 'nothing'}"
    )


def _number(run: Run, key: str) -> float:
    value = run.config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"run {run.id} ({run.label!r}): config[{key!r}] must be a number for an lr × λ grid, got {value!r}"
        )
    return float(value)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _tick(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def build_grids(runs: Sequence[Run], metric: str,
                per_model: Sequence[str] = PER_MODEL_BEFORE_V3) -> list[MethodGrid]:
    """Group finished runs into methods and average each lr × λ cell over seeds.

    ``per_model``: the config fields that vary within a stacked group (the sweep's record:
    :attr:`decaylab.store.SweepData.per_model`), which span the grid (``lr``, ``weight_decay``) or are
    averaged over (``seed``). A method is a label; if a label's runs differ in other config fields (say
    two numbers of epochs), each combination is its own method, named ``"label [field=value, ...]"``.
    Methods keep the order in which their labels first appear.
    """
    by_label: dict[str, list[Run]] = {}
    for run in runs:
        by_label.setdefault(run.label, []).append(run)
    grids = []
    for label, members in by_label.items():
        keys = sorted({key for run in members for key in run.config} - set(per_model))
        varying = [key for key in keys if len({_tick(run.config.get(key)) for run in members}) > 1]
        groups: dict[tuple, list[Run]] = {}
        for run in members:
            groups.setdefault(tuple(_tick(run.config.get(key)) for key in varying), []).append(run)
        for values, group in groups.items():
            fields = ", ".join(f"{k}={v}" for k, v in zip(varying, values, strict=True))
            name = f"{label} [{fields}]" if varying else label
            shared = {key: group[0].config.get(key) for key in keys if key not in varying}
            grids.append(_grid(name, label, group, metric, shared))
    return grids


def _grid(name: str, label: str, runs: list[Run], metric: str, shared: dict[str, Any]) -> MethodGrid:
    lrs = sorted({_number(run, "lr") for run in runs})
    wds = sorted({_number(run, "weight_decay") for run in runs})
    cells: dict[tuple[int, int], list[Run]] = {}
    for run in runs:
        cells.setdefault((lrs.index(_number(run, "lr")), wds.index(_number(run, "weight_decay"))), []).append(run)
    shape = (len(lrs), len(wds))
    error, std = np.full(shape, np.nan), np.full(shape, np.nan)
    acc_mean, acc_std = np.full(shape, np.nan), np.full(shape, np.nan)
    seeds = np.zeros(shape, dtype=int)
    run_ids = {}
    for (i, j), cell in sorted(cells.items()):
        values = np.array([metric_value(run.final, metric) for run in cell], dtype=float)
        seeds[i, j] = len(cell)
        run_ids[(i, j)] = [run.id for run in cell]
        if np.isfinite(values).all():
            error[i, j] = values.mean()
            std[i, j] = values.std(ddof=1) if len(values) > 1 else np.nan
        else:  # one diverged seed marks the cell diverged
            error[i, j], std[i, j] = np.inf, np.nan
        accs = np.array([_or_nan(metric_value(run.final, "test_acc")) for run in cell], dtype=float)
        if np.isfinite(accs).all():
            acc_mean[i, j] = accs.mean()
            acc_std[i, j] = accs.std(ddof=1) if len(accs) > 1 else np.nan
    return MethodGrid(
        name=name, label=label, lrs=np.array(lrs), weight_decays=np.array(wds), error=error, std=std, seeds=seeds,
        acc_mean=acc_mean, acc_std=acc_std, run_ids=run_ids, config=shared,
    )


def good_region(error: np.ndarray, delta: float) -> np.ndarray:
    """The cells within ``delta`` of the best finite cell: ``E ≤ E_min + δ`` (boolean mask)."""
    error = np.asarray(error, dtype=float)
    finite = np.isfinite(error)
    if not finite.any():
        return np.zeros(error.shape, dtype=bool)
    best = error[finite].min()
    # a relative slack of 1e-12 keeps cells that equal E_min + δ up to rounding
    return finite & (error <= best + delta + 1e-12 * max(1.0, abs(best)))


def separability(error: np.ndarray, delta: float) -> float:
    """The rectangle score ``|G| / |observed cells of rows(G) × cols(G)|`` (module docstring)."""
    error = np.asarray(error, dtype=float)
    good = good_region(error, delta)
    if not good.any():
        return math.nan
    rows, cols = good.any(axis=1), good.any(axis=0)
    observed = ~np.isnan(error)
    return float(good.sum() / observed[np.ix_(rows, cols)].sum())


def diagonal_slope(error: np.ndarray, lrs: Sequence[float], weight_decays: Sequence[float]) -> float:
    """Slope of ``log10 λ*(lr)`` against ``log10 lr`` over informative rows (module docstring)."""
    error = np.asarray(error, dtype=float)
    lrs, wds = np.asarray(lrs, dtype=float), np.asarray(weight_decays, dtype=float)
    finite = np.isfinite(error)
    if not finite.any():
        return math.nan
    median = float(np.median(error[finite]))
    xs, ys = [], []
    for i in range(error.shape[0]):
        if not finite[i].any() or lrs[i] <= 0:
            continue
        row = np.where(finite[i], error[i], np.inf)
        j = int(np.argmin(row))
        if row[j] > median or wds[j] <= 0:
            continue
        xs.append(math.log10(lrs[i]))
        ys.append(math.log10(wds[j]))
    if len(set(xs)) < 2:
        return math.nan
    x, y = np.array(xs), np.array(ys)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def additivity(error: np.ndarray) -> float:
    """Variance fraction of ``E`` explained by ``a_i + b_j`` over observed cells (module docstring)."""
    error = np.asarray(error, dtype=float)
    observed = ~np.isnan(error)
    finite = np.isfinite(error)
    if not finite.any():
        return math.nan
    values = np.where(np.isinf(error), error[finite].max(), error)
    rows, cols = np.nonzero(observed)
    n_rows, n_cols = len(set(rows.tolist())), len(set(cols.tolist()))
    if n_rows < 2 or n_cols < 2 or len(rows) <= n_rows + n_cols - 1:
        return math.nan  # an additive model fits any such grid exactly: nothing to measure
    n_rows, n_cols = error.shape
    design = np.zeros((len(rows), n_rows + n_cols))
    design[np.arange(len(rows)), rows] = 1.0
    design[np.arange(len(rows)), n_rows + cols] = 1.0
    target = values[rows, cols]
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    total = float(((target - target.mean()) ** 2).sum())
    if total <= 1e-300:
        return 1.0
    residual = float(((target - design @ coef) ** 2).sum())
    return max(0.0, 1.0 - residual / total)


def method_summary(grid: MethodGrid, delta: float, label_counts: dict[str, int] | None = None) -> dict[str, Any]:
    """The table row of a method as plain JSON-ready data (``None`` for undefined numbers)."""
    best = grid.best

    def clean(value: float) -> float | None:
        return None if value is None or not math.isfinite(value) else float(value)

    row: dict[str, Any] = {
        "method": grid.name,
        "label": grid.label,
        "runs_done": int(grid.seeds.sum()),
        "runs_total": int(sum(label_counts.values())) if label_counts else int(grid.seeds.sum()),
        "grid": [len(grid.lrs), len(grid.weight_decays)],
        "decay": grid.config.get("decay"),
        "decay_scale": grid.config.get("decay_scale"),
        "best_lr": None, "best_weight_decay": None, "best_metric": None, "best_metric_std": None,
        "best_test_acc": None, "best_test_acc_std": None, "best_seeds": 0,
        "separability": clean(separability(grid.error, delta)),
        "good_cells": int(good_region(grid.error, delta).sum()),
        "diagonal_slope": clean(diagonal_slope(grid.error, grid.lrs, grid.weight_decays)),
        "additivity": clean(additivity(grid.error)),
        "diverged_cells": int(np.isinf(grid.error).sum()),
    }
    if best is not None:
        i, j = best
        row.update(
            best_lr=float(grid.lrs[i]), best_weight_decay=float(grid.weight_decays[j]),
            best_metric=clean(grid.error[i, j]), best_metric_std=clean(grid.std[i, j]),
            best_test_acc=clean(grid.acc_mean[i, j]), best_test_acc_std=clean(grid.acc_std[i, j]),
            best_seeds=int(grid.seeds[i, j]),
        )
    return row
