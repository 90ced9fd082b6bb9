r"""``decaylab reproduce timescale``: does the optimal λ keep AdamW's EMA timescale in epochs constant?

Wang & Aitchison ("How to set AdamW's weight decay as you scale model and dataset size", ICML 2025,
arXiv 2405.13698): AdamW's weights are an exponential moving average of the updates with timescale
``τ_iter = 1/(η·λ)`` steps, ``τ_epoch = τ_iter·B/N`` epochs (:mod:`decaylab.timescale`), and the
optimal ``τ_epoch`` stays about constant as the dataset grows. So across dataset sizes ``N`` (epochs
fixed) and learning rates ``η``, the validation-optimal λ should move as ``1/(η·N)`` — constant
``τ_epoch`` — rather than stay put.

**Data.** Every size ``N`` is a nested subset of the dataset's training split (``train_examples = N``:
the first ``N`` of a fixed permutation, :meth:`decaylab.data.TensorData.train_subset`, so a smaller
subset is part of every larger one). Every run records the dataset's own validation split (MNIST-1D:
signals generated apart from its training and test splits) and test split: validation selects, and
the test error is reported for the runs validation selected.

**Statistic** (fixed in the spec before running). Per seed and ``(N, η)`` row, ``λ*`` minimizes the
validation loss over the λ grid, refined by a parabola in ``log λ`` through the best point and its
neighbours (:func:`row_optimum`). Per seed, least squares ``log λ* = a + s_N·log N + s_η·log η``
over the rows (:func:`slopes`). Constant ``τ_epoch`` predicts ``s_N = s_η = −1``, a constant
optimal λ predicts 0. A slope counts for constant ``τ`` when the 95% t-interval of its mean over
seeds lies wholly below the spec's ``[claim] threshold`` (−0.5, the midpoint), against it when it
lies wholly above (:func:`~decaylab.reproduce.stats.against`). HELD when both count for it, DID NOT
HOLD when either counts against; undecided, seeds are added up to the spec's ``max_seeds``.

**Premises** (PREMISE NOT MET, with which, when one fails): every seed's optimum lies inside the λ
grid (an optimum on the edge has no λ*), and in every ``(N, η)`` cell the best λ beats the smallest
on validation loss by more than two standard errors of the paired per-seed difference (decay matters).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..report.build import Section
from . import _regimes as R
from . import stats as S
from .core import Reproduction, Verdict, claim_numbers, register
from .stats import row_optimum

__all__ = ["REPRODUCTION", "analyze", "judge", "row_optimum", "slopes"]

NAME = "timescale"


# ----------------------------------------------------------------------------------------------- statistics


def slopes(rows: dict[tuple[int, float], float]) -> tuple[float, float]:
    """``(s_N, s_η)`` of the least-squares fit ``log λ* = a + s_N·log N + s_η·log η`` over ``rows``
    (``(N, η) -> λ*``).

    >>> s_n, s_lr = slopes({(n, lr): 1 / (n * lr) for n in (1, 2, 4) for lr in (1, 3)})
    >>> round(s_n, 9), round(s_lr, 9)
    (-1.0, -1.0)
    """
    import numpy as np

    keys = sorted(rows)
    X = np.array([[1.0, math.log(n), math.log(lr)] for n, lr in keys])
    y = np.array([math.log(rows[k]) for k in keys])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    return float(coef[1]), float(coef[2])


@dataclass
class Judgement:
    """What :func:`judge` decides from the validation losses; plain data for the verdict."""

    held: bool | None
    premises: list[S.Premise]
    slope_n: S.Interval | None = None
    slope_lr: S.Interval | None = None
    parts: tuple[bool | None, bool | None] = (None, None)
    optima: dict[tuple[int, float], list[float]] | None = None  # (N, lr) -> λ* per seed
    seeds: int = 0

    @property
    def premise_failed(self) -> list[str]:
        return [p.name for p in self.premises if not p.held]


def _part(slopes: Sequence[float], threshold: float) -> bool | None:
    """True: the slope's t-interval lies below ``threshold`` (constant τ); False: wholly above it."""
    return S.against(S.interval(threshold - x for x in slopes), 0.0)


def judge(losses: dict[tuple[int, float, float, int], float], *, threshold: float) -> Judgement:
    """The verdict from validation losses ``(N, lr, λ, seed) -> loss`` of a complete grid; each slope
    is judged against ``threshold`` (the spec's ``[claim] threshold``)."""
    sizes = sorted({k[0] for k in losses})
    lrs = sorted({k[1] for k in losses})
    lams = sorted({k[2] for k in losses})
    seeds = sorted({k[3] for k in losses})
    missing = [(n, lr, lam, s) for n in sizes for lr in lrs for lam in lams for s in seeds
               if (n, lr, lam, s) not in losses]
    if missing:
        raise ValueError(f"the grid is not complete: {len(missing)} runs missing, e.g. {missing[0]}")
    optima: dict[tuple[int, float], list[float]] = {}
    edge = []
    for n in sizes:
        for lr in lrs:
            row = []
            for s in seeds:
                lam = row_optimum(lams, [losses[(n, lr, x, s)] for x in lams])
                if lam is None:
                    edge.append((n, lr, s))
                row.append(lam)
            optima[(n, lr)] = row
    # decay matters: best λ (seed-mean) against the smallest λ, paired per seed
    weak = []
    for n in sizes:
        for lr in lrs:
            means = {lam: sum(losses[(n, lr, lam, s)] for s in seeds) / len(seeds) for lam in lams}
            best = min(lams, key=means.__getitem__)
            gain = S.Stat.of(losses[(n, lr, lams[0], s)] - losses[(n, lr, best, s)] for s in seeds)
            if S.decide(gain.mean, S.spread_of(gain)) is not True:
                weak.append((n, lr))
    premises = [
        S.Premise.at_most("optima on an end of the λ grid", len(edge), 0,
                          f"{len(edge)} of {len(sizes) * len(lrs) * len(seeds)} (N, lr, seed) rows have their best "
                          f"λ on an end of [{lams[0]:g}, {lams[-1]:g}]" + (f", e.g. {edge[0]}" if edge else "")),
        S.Premise.at_most("cells where decay does not matter", len(weak), 0,
                          f"{len(weak)} of {len(sizes) * len(lrs)} (N, lr) cells where the best λ does not beat "
                          "the smallest by 2 standard errors of the paired difference"
                          + (f", e.g. {weak[0]}" if weak else "")),
    ]
    out = Judgement(None, premises, optima=optima, seeds=len(seeds))
    if edge or len(seeds) < S.MIN_SEEDS:
        if len(seeds) < S.MIN_SEEDS:
            premises.append(S.Premise.at_least("seeds", len(seeds), S.MIN_SEEDS,
                                               f"{len(seeds)} seeds; a verdict needs {S.MIN_SEEDS}"))
        return out
    per_seed = [slopes({k: v[i] for k, v in optima.items()}) for i in range(len(seeds))]
    out.slope_n = S.interval(s for s, _ in per_seed)
    out.slope_lr = S.interval(s for _, s in per_seed)
    out.parts = (_part([s for s, _ in per_seed], threshold), _part([s for _, s in per_seed], threshold))
    out.held = S.combine(out.parts) if not out.premise_failed else None
    return out


# ----------------------------------------------------------------------------------------------- the verdict


def _geomean(xs: Sequence[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def analyze(store_path: str | Path, spec: Any, scale: str) -> Verdict:
    from ..timescale import tau_epoch

    # the runs of this spec (a store may also hold runs of an earlier version, on datasets carved for it)
    runs = [run for run in R.finished_runs(store_path, spec.name) if run.config.get("train_examples")]
    losses: dict[tuple[int, float, float, int], float] = {}
    by_key: dict[tuple[int, float, float, int], Any] = {}
    for run in runs:
        key = (run.config["train_examples"], run.config["lr"], run.config["weight_decay"], run.config["seed"])
        value = run.final.get("val_loss")  # validation selects
        losses[key] = float(value) if value is not None else math.inf
        by_key[key] = run
    if not runs:
        return Verdict(NAME, None, f"{NAME}: INCONCLUSIVE — no finished run of the spec", {"runs": 0})
    batch = runs[0].config["batch_size"]
    epochs = runs[0].config["epochs"]
    threshold = claim_numbers(spec, ("threshold",))["threshold"]
    try:
        j = judge(losses, threshold=threshold)
    except ValueError as error:
        return Verdict(NAME, None, f"{NAME}: INCONCLUSIVE — {error}", {"runs": len(runs)})

    sizes = sorted({k[0] for k in losses})
    lrs = sorted({k[1] for k in losses})
    lams = sorted({k[2] for k in losses})
    seeds = sorted({k[3] for k in losses})
    # the run validation selected per (N, lr, seed): the grid point with the lowest validation loss
    chosen = {(n, lr, s): min(lams, key=lambda lam, n=n, lr=lr, s=s: losses[(n, lr, lam, s)])
              for n in sizes for lr in lrs for s in seeds}
    test_of = {(n, lr, s): by_key[(n, lr, lam, s)].final for (n, lr, s), lam in chosen.items()}

    table = []
    for n in sizes:
        for lr in lrs:
            row_opt = [x for x in j.optima[(n, lr)] if x is not None]
            lam_star = _geomean(row_opt) if row_opt else math.nan
            val = S.Stat.of(losses[(n, lr, chosen[(n, lr, s)], s)] for s in seeds)
            acc = S.Stat.of(test_of[(n, lr, s)].get("test_acc") for s in seeds)
            table.append({
                "N": n, "lr": lr, "λ* (geomean over seeds)": f"{lam_star:.3g}",
                "τ*_epoch": f"{tau_epoch(lam_star, lr, batch_size=batch, dataset_size=n):.3g}"
                if row_opt else "—",
                "validation loss at the selected λ": val.text(".3f"),
                "test accuracy of the selected runs": acc.text(".3f"),
            })
    taus = [float(r["τ*_epoch"]) for r in table if r["τ*_epoch"] != "—"]
    premises_text = "; ".join(f"{p.text()} ({p.detail})" for p in j.premises)
    setting = (f"{len(seeds)} seeds, N ∈ {{{', '.join(map(str, sizes))}}}, "
               f"lr ∈ {{{', '.join(f'{x:g}' for x in lrs)}}}, {epochs:g} epochs, selection on validation loss")
    if j.premise_failed:
        line = f"{NAME}: {S.PREMISE_NOT_MET} — {S.premises_line(j.premises)} ({setting})"
    else:
        status = S.status(j.held)
        line = (f"{NAME}: {status} — slope of log λ* against log N {j.slope_n.text('+.2f')} "
                f"({S.word(j.parts[0])}), against log lr {j.slope_lr.text('+.2f')} ({S.word(j.parts[1])}); "
                f"constant τ_epoch predicts −1, a constant λ 0, judged against {threshold:g}; "
                f"τ*_epoch {min(taus):.3g}–{max(taus):.3g} epochs across the {len(table)} cells ({setting})")
    numbers = {
        "selection": "validation", "metric": "validation loss (val_loss); the test accuracy is reported for "
                                             "the selected runs only",
        "seeds": len(seeds), "threshold": threshold,
        "slope_N": j.slope_n.plain() if j.slope_n else None, "slope_lr": j.slope_lr.plain() if j.slope_lr else None,
        "parts": {"N": j.parts[0], "lr": j.parts[1]},
        "optima": {f"N={n} lr={lr:g}": [x if x is None else round(x, 6) for x in v] for (n, lr), v in j.optima.items()},
        "cells": table,
    }
    base = runs[0].config["dataset"]
    prose = (f"Each N is a nested subset of {base}'s training split (train_examples: the first N of a fixed "
             f"permutation); every run is evaluated on {base}'s own validation and test splits, validation selects "
             "(the λ of each N, lr and seed), and the test accuracy is that of the selected runs. "
             f"λ* is the validation-loss minimum over the λ grid refined by a parabola in log λ; τ*_epoch = "
             f"B/(lr·λ*·N) with B = {batch}.\n\nPremises: {premises_text}.")
    sections = [Section("Timescale: the validation-optimal λ across N and lr", prose=prose, table=table,
                        figures=[("λ* (geometric mean over seeds) against N, one line per lr; dashed: constant "
                                  "τ_epoch through the smallest N", _figure(table, sizes, lrs, batch))])]
    return Verdict(NAME, j.held, line, numbers, sections, premises=j.premises, seeds=len(seeds))


def _figure(table: list[dict[str, Any]], sizes: list[int], lrs: list[float], batch: int) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    ax_lam, ax_tau = fig.subplots(1, 2)
    for lr in lrs:
        rows = [r for r in table if r["lr"] == lr and r["τ*_epoch"] != "—"]
        if not rows:
            continue
        ns = [r["N"] for r in rows]
        lam = [float(r["λ* (geomean over seeds)"]) for r in rows]
        line, = ax_lam.plot(ns, lam, "o-", label=f"lr {lr:g}")
        ax_lam.plot(ns, [lam[0] * ns[0] / n for n in ns], "--", color=line.get_color(), alpha=0.6)
        ax_tau.plot(ns, [float(r["τ*_epoch"]) for r in rows], "o-", label=f"lr {lr:g}")
    for ax, label in ((ax_lam, "λ* (torch convention)"), (ax_tau, "τ*_epoch = B/(lr·λ*·N)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (training examples)")
        ax.set_ylabel(label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- registration


REPRODUCTION = register(Reproduction(
    name=NAME,
    title="AdamW's optimal λ keeps the EMA timescale in epochs constant across dataset sizes and lrs",
    claim="across dataset sizes (epochs fixed) and learning rates, the validation-optimal λ moves so that "
          "τ_epoch = B/(η·λ·N) stays constant (slopes of log λ* against log N and log η near −1), while the "
          "optimal λ itself does not stay put",
    source="Wang & Aitchison, How to set AdamW's weight decay as you scale model and dataset size, ICML 2025 "
           "(arXiv 2405.13698)",
    analyze=analyze,
    seeds=3,
    stack=135,
))
