"""What the training-regime reproductions (overtraining, undertraining, bf16, timescale) share: reading a
sweep's finished runs by cell and their curves. The statistics and status words: :mod:`decaylab.reproduce.stats`.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from decaylab.store import Run, load_curves, load_sweep

from . import stats as S


def finished_runs(store_path: str | Path, sweep: str) -> list[Run]:
    """The sweep's finished runs (status ``done``)."""
    return load_sweep(store_path, sweep).runs


def by_cell(runs: Sequence[Run], key: Callable[[Run], Any]) -> dict[Any, list[Run]]:
    """Runs grouped by ``key(run)`` (a cell: method label, λ, ...), each group sorted by seed."""
    cells: dict[Any, list[Run]] = defaultdict(list)
    for run in runs:
        cells[key(run)].append(run)
    return {k: sorted(v, key=lambda r: r.config.get("seed", 0)) for k, v in cells.items()}


def value(run: Run, key: str) -> float:
    """``run.final[key]`` as a float; NaN when the run lacks it or diverged (the store writes a diverged
    run's metrics as null)."""
    v = run.final.get(key)
    return math.nan if v is None else float(v)


def accuracy(run: Run, key: str) -> float:
    """An accuracy of ``run.final`` (``test_acc``, ``val_acc``, ...): 0 for a run that diverged (it
    classifies nothing: its error is 1, the worst, so selection never picks it), NaN when it lacks it."""
    if key not in run.final:
        return math.nan
    v = run.final[key]
    return 0.0 if v is None or not math.isfinite(float(v)) else float(v)


def integrated_decay(config: Mapping[str, Any], steps: int | None = None) -> float:
    """``Σ_t s_t·λ_t`` over the run's ``steps`` (default: the config's own length): the integrated decay in
    e-folds (decay alone leaves ``≈ exp(−Σ)`` of the weights) that a run's config applies, with ``λ_t``
    as its callbacks shape it (a decay window) and ``s_t`` its ``decay_scale`` (``lr``: ``lr·η_t``;
    ``schedule``: ``η_t``).

    >>> round(integrated_decay({"lr": 0.5, "weight_decay": 0.1, "schedule": "constant"}, 100), 6)
    5.0
    >>> round(integrated_decay({"lr": 0.5, "weight_decay": 0.2, "schedule": "constant",
    ...                         "callbacks": ["decay_window:0.5-1"]}, 100), 6)
    5.0
    >>> round(integrated_decay({"lr": 0.5, "weight_decay": 0.1, "schedule": "constant", "decay_scale": "lr",
    ...                         "dataset": "mnist1d", "epochs": 1, "batch_size": 100}), 6)   # 40 steps
    2.0
    """
    from ..optim.rules import decay_scale
    from ..train.callbacks import parse
    from ..train.config import TrainConfig
    from ..train.loop import total_steps
    from ..train.schedules import lr_schedule

    c = TrainConfig.from_dict(dict(config))
    steps = total_steps(c) if steps is None else steps
    schedule = lr_schedule(c, steps)
    lam: Any = c.weight_decay
    for text in c.callbacks:
        lam = parse(text).weight_decay(lam, steps=steps, lr_schedule=schedule, decay_scale=c.decay_scale)
    total = 0.0
    for t in range(steps):
        lam_t = lam(t) if callable(lam) else lam
        total += float(decay_scale(c.decay_scale, c.lr * schedule(t), c.lr)) * float(lam_t)
    return total


def curves_of(store_path: str | Path, runs: Sequence[Run]) -> dict[int, dict[str, list[tuple[int, float]]]]:
    return load_curves(store_path, [r.id for r in runs])


def at_step(curve: Sequence[tuple[int, float]], step: int) -> float:
    """The curve's value at the evaluation nearest to ``step``."""
    if not curve:
        return math.nan
    return min(curve, key=lambda point: abs(point[0] - step))[1]


def too_few_seeds(cells: dict[Any, list[Run]], needed: Iterable[Any]) -> str | None:
    """A sentence naming the cells with fewer than :data:`~decaylab.reproduce.stats.MIN_SEEDS` finished seeds,
    or None."""
    short = [f"{k!s} ({len(cells.get(k, []))})" for k in needed if len(cells.get(k, [])) < S.MIN_SEEDS]
    if not short:
        return None
    return f"needs at least {S.MIN_SEEDS} finished seeds per cell; these have fewer: {', '.join(short)}"
