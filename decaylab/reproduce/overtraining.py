r"""``decaylab reproduce overtraining``: "Why WD", vision — weight decay with a large learning rate.

D'Angelo, Andriushchenko, Varre, Flammarion, "Why do we need weight decay in modern deep
learning?" (NeurIPS 2024, arXiv 2310.04415; code tml-epfl/why-weight-decay). In the over-training
regime — the runs fit their training set — plain SGD with weight decay and a *large* learning rate
reaches the lowest test error; the Jacobian norm ``‖J‖_F`` (mean over inputs of
``‖∂logits/∂θ‖_F``) falls as ``η·λ`` grows, while the test error is best at an intermediate ``η·λ``:
decay keeps SGD's noise from vanishing, and that noise regularizes ``‖J‖_F``.

**Design** (``specs/overtraining.toml``). Two learning rates (``small lr``, ``large lr``) × a λ grid
from 0 to well past the optimum, plain SGD, a constant lr for half the run then one deep drop, every
cell over the same seeds.

**Selection** (validation only, among the cells in the claim's regime: every seed reaches ``[claim]
train_acc``): ``λ*_large`` is the large-lr λ with the lowest mean validation error, ``λ*_small`` the
small lr's best λ > 0 (its decayed corner). The test errors of the selected cells are what is judged.

**Statistic** (thresholds fixed in the spec's ``[claim]`` before any verdict was read). Paired
per-seed differences of test error, each judged by its 95 % Student-t interval
(:func:`~decaylab.reproduce.stats.interval`) against ``min_gain``
(:func:`~decaylab.reproduce.stats.against`):

- large lr + WD is lowest: ``E(c) − E(large, λ*_large)`` for ``c`` = (small, 0), (small,
  λ*_small), (large, 0);
- the optimum is intermediate: ``E(large, λ_max) − E(large, λ*_large)`` (the λ = 0 end is the
  previous line's third difference);

and ``‖J‖_F`` falls as ``η·λ`` grows: per seed the Spearman correlation ``ρ`` of ``‖J‖_F`` with λ over
the large-lr grid, ``−ρ`` judged against ``jacobian_rho``. HELD when every part is above its
threshold, DID NOT HOLD when any interval lies wholly below it; otherwise undecided, and
:meth:`~decaylab.reproduce.core.Reproduction.run` adds seeds up to ``max_seeds``.

**Premises** (PREMISE NOT MET, naming which): every run of the four compared cells reaches
``[claim] train_acc`` (the over-training regime; the grid's top λ exists to bracket the optimum and
need not fit), ``λ*_large`` lies inside the λ grid, and ≥ 3 seeds.

Reported, not judged: the train loss at the lr drop and at the end of every cell (the paper's
loss-stabilization signature: with decay the train loss stays high during the large-lr phase and
drops across the lr drop), the weight norm, each cell's ``‖J‖_F``, and the weight EMA (β = 0.999)
read *at* the lr drop (the ``EMA`` runs: the large-lr phase alone) beside the final test error after
the drop: does averaging the large-lr iterates give what the drop gives?
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..report.build import Section
from . import _regimes as R
from . import stats as S
from .core import Reproduction, Verdict, claim_numbers, register

__all__ = ["REPRODUCTION", "analyze", "judge", "spearman", "Judgement", "CLAIM_KEYS", "SMALL", "LARGE", "EMA"]

NAME = "overtraining"
SMALL, LARGE = "small lr", "large lr"
EMA = "large lr, EMA at the drop"  # the large-lr phase alone, with a weight EMA read at its end (reported)
#: The keys the spec's ``[claim]`` table must hold (besides max_seeds and seed_step).
CLAIM_KEYS = ("min_gain", "jacobian_rho", "train_acc")

Cell = tuple[str, float]  # (label, λ)


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation of ``ys`` with ``xs`` (average ranks for ties; nan for < 3 points).

    >>> spearman([0, 1, 2, 3], [9.0, 7.0, 5.0, 1.0]), round(spearman([0, 1, 2, 3], [9.0, 5.0, 7.0, 1.0]), 6)
    (-1.0, -0.8)
    """
    if len(xs) < 3 or not all(math.isfinite(v) for v in (*xs, *ys)):
        return math.nan
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys).statistic)


@dataclass
class Judgement:
    """What :func:`judge` decides; plain data for the verdict."""

    held: bool | None
    premises: list[S.Premise]
    lam_large: float
    lam_small: float
    parts: dict[str, tuple[S.Interval, float, bool | None]] = field(default_factory=dict)  # name -> (iv, thr, word)
    rho: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)


def judge(test_err: Mapping[tuple[str, float, int], float], val_err: Mapping[tuple[str, float, int], float],
          jacobian: Mapping[tuple[float, int], float], train_acc: Mapping[tuple[str, float, int], float], *,
          min_gain: float, jacobian_rho: float, min_train_acc: float) -> Judgement:
    """The verdict from per-run values keyed ``(label, λ, seed)`` (``jacobian``: ``(λ, seed)`` of the large
    lr): validation selects, test judges (see the module's docstring)."""
    seeds = sorted({k[2] for k in test_err})
    lams = {label: sorted({k[1] for k in test_err if k[0] == label}) for label in (SMALL, LARGE)}
    missing = [(label, lam, s) for label in (SMALL, LARGE) for lam in lams[label] for s in seeds
               if (label, lam, s) not in test_err]
    if missing or len(lams[LARGE]) < 3 or not lams[SMALL]:
        raise ValueError(f"the grid is not complete: {len(missing)} runs missing"
                         + (f", e.g. {missing[0]}" if missing else f"; λ grids {lams}"))

    def mean_val(label: str, lam: float) -> float:
        return sum(val_err[(label, lam, s)] for s in seeds) / len(seeds)

    def fits(label: str, lam: float) -> bool:  # every seed of the cell is in the over-training regime
        return all(train_acc.get((label, lam, s), 0.0) >= min_train_acc for s in seeds)

    # validation selects among the cells in the claim's regime (every seed fits its training set)
    regime = {label: [lam for lam in lams[label] if fits(label, lam)] or lams[label] for label in (SMALL, LARGE)}
    lam_large = min(regime[LARGE], key=lambda lam: mean_val(LARGE, lam))
    decayed_small = [lam for lam in regime[SMALL] if lam > 0] or [lam for lam in lams[SMALL] if lam > 0] \
        or lams[SMALL]
    lam_small = min(decayed_small, key=lambda lam: mean_val(SMALL, lam))
    best: Cell = (LARGE, lam_large)
    compared: list[Cell] = [(SMALL, 0.0), (SMALL, lam_small), (LARGE, 0.0), best]
    fit = min(train_acc[(*c, s)] for c in compared for s in seeds if (*c, s) in train_acc)
    interior = lams[LARGE][0] < lam_large < lams[LARGE][-1]
    premises = [
        S.Premise.at_least("train accuracy of the compared cells", fit, min_train_acc,
                           "lowest final train accuracy over every seed of small/large lr × λ ∈ {0, λ*}"),
        S.Premise("selected λ inside the large-lr grid", lam_large, f"({lams[LARGE][0]:g}, {lams[LARGE][-1]:g})",
                  interior, "λ*_large: the lowest mean validation error among the λ whose runs all fit; at an end "
                  "of the grid it is not an optimum", "in"),
    ]
    if len(seeds) < S.MIN_SEEDS:
        premises.append(S.Premise.at_least("seeds", len(seeds), S.MIN_SEEDS,
                                           f"{len(seeds)} seeds; a verdict needs {S.MIN_SEEDS}"))

    def diff(cell: Cell) -> S.Interval:
        return S.interval(test_err[(*cell, s)] - test_err[(*best, s)] for s in seeds)

    parts: dict[str, tuple[S.Interval, float, bool | None]] = {}
    for cell in compared[:3]:
        iv = diff(cell)
        parts[f"below {cell[0]}, λ={cell[1]:g}"] = (iv, min_gain, S.against(iv, min_gain))
    top = (LARGE, lams[LARGE][-1])
    iv = diff(top)
    parts[f"below large lr, λ={top[1]:g} (the top of the grid)"] = (iv, min_gain, S.against(iv, min_gain))
    rho = [spearman(lams[LARGE], [jacobian.get((lam, s), math.nan) for lam in lams[LARGE]]) for s in seeds]
    iv = S.interval(-r for r in rho)
    parts["‖J‖_F falls with λ: −ρ ="] = (iv, jacobian_rho, S.against(iv, jacobian_rho))
    met = all(p.held for p in premises)
    held = S.combine(w for _, _, w in parts.values()) if met else None
    return Judgement(held, premises, lam_large, lam_small, parts, rho, seeds)


# ----------------------------------------------------------------------------------------------- the verdict


def analyze(store_path: str | Path, spec: Any, scale: str) -> Verdict:
    claim = claim_numbers(spec, CLAIM_KEYS)
    runs = [r for r in R.finished_runs(store_path, spec.name) if r.label in (SMALL, LARGE)]
    key = {r.id: (r.label, float(r.config["weight_decay"]), int(r.config["seed"])) for r in runs}
    test_err = {key[r.id]: 1.0 - R.accuracy(r, "test_acc") for r in runs}
    val_err = {key[r.id]: 1.0 - R.accuracy(r, "val_acc") for r in runs}
    train_acc = {key[r.id]: R.accuracy(r, "train_acc") for r in runs}
    jacobian = {key[r.id][1:]: R.value(r, "jacobian_norm") for r in runs if r.label == LARGE}
    try:
        j = judge(test_err, val_err, jacobian, train_acc, min_gain=claim["min_gain"],
                  jacobian_rho=claim["jacobian_rho"], min_train_acc=claim["train_acc"])
    except ValueError as error:
        return Verdict(NAME, None, S.verdict_line(NAME, None, str(error)), {"runs": len(runs)})

    cells = R.by_cell(runs, lambda r: key[r.id][:2])
    lrs = {label: next(r.config["lr"] for r in runs if r.label == label) for label in (SMALL, LARGE)}
    n = len(j.seeds)
    setting = (f"{n} seeds; lr {lrs[SMALL]:g} / {lrs[LARGE]:g}; λ selected on validation: λ*_large "
               f"{j.lam_large:g} (η·λ {lrs[LARGE] * j.lam_large:.1e}), λ*_small {j.lam_small:g}")
    err = {c: S.Stat.of(1.0 - R.accuracy(r, "test_acc") for r in v) for c, v in cells.items()}
    if not all(p.held for p in j.premises):
        line = f"{NAME}: {S.PREMISE_NOT_MET} — {S.premises_line(j.premises)} ({setting})"
    else:
        parts = "; ".join((f"{name} by {_points(iv)}" if "ρ" not in name else f"{name} {iv.text('+.2f')}")
                          + f" ({S.word(w)})" for name, (iv, _, w) in j.parts.items())
        line = S.verdict_line(NAME, j.held, (
            f"test error large lr + λ*={j.lam_large:g} {_pct(err[(LARGE, j.lam_large)])}, small lr λ=0 "
            f"{_pct(err[(SMALL, 0.0)])}, small lr λ={j.lam_small:g} {_pct(err[(SMALL, j.lam_small)])}, large lr "
            f"λ=0 {_pct(err[(LARGE, 0.0)])}; paired: {parts} [min_gain {100 * claim['min_gain']:g} points, "
            f"−ρ vs {claim['jacobian_rho']:g}] ({setting})"))

    curves = R.curves_of(store_path, runs)
    table = []
    for (label, lam), group in sorted(cells.items()):
        drop = [R.at_step(curves.get(r.id, {}).get("train_loss", []),
                          int(r.final.get("steps") or r.config.get("steps") or 0) // 2) for r in group]
        table.append({
            "cell": f"{label}, λ={lam:g}", "η·λ": f"{lrs[label] * lam:.1e}",
            "train acc (min)": f"{min(R.accuracy(r, 'train_acc') for r in group):.2%}",
            "validation error": _pct(S.Stat.of(1.0 - R.accuracy(r, "val_acc") for r in group)),
            "test error": _pct(err[(label, lam)]),
            "‖J‖_F": S.Stat.of(R.value(r, "jacobian_norm") for r in group).text(".1f"),
            "train loss at the drop → end": f"{S.mean_std(drop)[0]:.3f} → "
                                            f"{S.mean_std(R.value(r, 'train_loss') for r in group)[0]:.3f}",
            "‖w‖": S.Stat.of(R.value(r, "weight_norm") for r in group).text(".1f"),
            "selected": "λ*" if (label == LARGE and lam == j.lam_large) or (label == SMALL and lam == j.lam_small)
            else "",
        })
    ema_rows, ema_numbers = _ema(store_path, spec.name, test_err)
    table.extend(ema_rows)
    numbers = {
        "selection": "validation", "seeds": n, "claim": claim, "lr": lrs, "ema_at_the_drop": ema_numbers,
        "lambda_star_large": j.lam_large, "lambda_star_small": j.lam_small,
        "parts": {name: {"interval": iv.plain(), "threshold": thr, "result": S.word(w)}
                  for name, (iv, thr, w) in j.parts.items()},
        "spearman_rho_per_seed": [S.finite_or_none(r) for r in j.rho],
        "test_error": {f"{c[0]} λ={c[1]:g}": v.plain() for c, v in err.items()},
        "cells": table,
    }
    lams = sorted(lam for label, lam in cells if label == LARGE)
    jac = [S.Stat.of(R.value(r, "jacobian_norm") for r in cells[(LARGE, lam)]) for lam in lams]
    prose = (
        "Plain SGD (momentum 0), a constant lr for half the run then one drop; every cell over the same seeds "
        "(mean ± sample std). Validation selects λ*_large and λ*_small; the verdict judges paired per-seed "
        "differences of test error by their 95% Student-t intervals against min_gain, and the per-seed Spearman "
        "correlation of ‖J‖_F with λ (large lr) against jacobian_rho. ‖J‖_F is the mean over test inputs of the "
        "Frobenius norm of the Jacobian of the logits w.r.t. all parameters (decaylab.diagnostics.jacobian_norm). "
        "The train loss at the drop and at the end is the paper's loss-stabilization signature (reported).\n\n"
        "Premises: " + "; ".join(p.text() for p in j.premises) + f". Result: {S.word(j.held)}.")
    sections = [Section("Over-training: lr × λ, test error and Jacobian norm", prose=prose, table=table,
                        figures=[("Test error (both lrs) and ‖J‖_F (large lr) against λ, mean ± std over seeds",
                                  _figure(cells, lams, jac))])]
    return Verdict(NAME, j.held, line, numbers, sections, premises=j.premises, seeds=n)


def _ema(store_path: str | Path, sweep: str, test_err: Mapping[tuple[str, float, int], float]
         ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The weight EMA read at the lr drop (the ``EMA`` runs: the large-lr phase alone): per λ, the test error
    of the EMA and of the iterate at the drop, beside the final test error of the full large-lr run, and the
    paired per-seed difference EMA at the drop − final (reported, not judged)."""
    runs = [r for r in R.finished_runs(store_path, sweep) if r.label == EMA and "ema_test_acc" in r.final]
    rows, numbers = [], {}
    for lam, group in sorted(R.by_cell(runs, lambda r: float(r.config["weight_decay"])).items()):
        ema = {int(r.config["seed"]): 1.0 - R.accuracy(r, "ema_test_acc") for r in group}
        at_drop = S.Stat.of(1.0 - R.accuracy(r, "test_acc") for r in group)
        diff = S.interval(ema[s] - test_err[(LARGE, lam, s)] for s in ema if (LARGE, lam, s) in test_err)
        numbers[f"λ={lam:g}"] = {"ema_test_error": S.Stat.of(ema.values()).plain(), "iterate_test_error":
                                 at_drop.plain(), "ema_minus_final": diff.plain()}
        rows.append({"cell": f"{EMA}, λ={lam:g}", "η·λ": "", "train acc (min)": "",
                     "validation error": _pct(S.Stat.of(1.0 - R.accuracy(r, "ema_val_acc") for r in group)),
                     "test error": f"EMA {_pct(S.Stat.of(ema.values()))}; iterate {_pct(at_drop)}; EMA − final "
                                   f"{_points(diff)}",
                     "‖J‖_F": "", "train loss at the drop → end": "", "‖w‖": "", "selected": ""})
    return rows, numbers


def _pct(s: S.Stat) -> str:
    return f"{100 * s.mean:.1f} ± {100 * s.std:.1f}%" if math.isfinite(s.mean) else s.text()


def _points(iv: S.Interval) -> str:
    return iv.scaled(100).text("+.2f").replace(" (", " points (", 1)


def _figure(cells, lams, jac):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2), layout="constrained")
    ax_err, ax_jac = fig.subplots(1, 2)
    for k, label in enumerate((SMALL, LARGE)):
        xs = sorted(lam for lb, lam in cells if lb == label)
        stats = [S.Stat.of(1.0 - R.accuracy(r, "test_acc") for r in cells[(label, lam)]) for lam in xs]
        ax_err.errorbar(range(len(xs)), [100 * s.mean for s in stats], yerr=[100 * s.std for s in stats],
                        marker="o", capsize=3, color=f"C{k}", label=label)
    ax_err.set_xticks(range(len(lams)), [f"{lam:g}" for lam in lams])
    ax_err.set_ylabel("test error (%)")
    ax_err.legend(fontsize=7)
    ax_jac.errorbar(range(len(lams)), [s.mean for s in jac], yerr=[s.std for s in jac], marker="o", capsize=3,
                    color="C1")
    ax_jac.set_xticks(range(len(lams)), [f"{lam:g}" for lam in lams])
    ax_jac.set_ylabel("‖J‖_F (large lr)")
    for ax in (ax_err, ax_jac):
        ax.set_xlabel("λ")
        ax.grid(alpha=0.3)
    return fig


REPRODUCTION = register(Reproduction(
    name=NAME,
    title="Why WD (vision): weight decay with a large lr in the over-training regime",
    claim=("with the runs fitting their training set, SGD with WD and a large lr gives the lowest test error; "
           "‖J‖_F falls as η·λ grows while the test error is best at an intermediate η·λ"),
    source="D'Angelo, Andriushchenko, Varre, Flammarion, 'Why do we need weight decay in modern deep learning?', "
           "NeurIPS 2024 (arXiv 2310.04415), vision section (code: tml-epfl/why-weight-decay)",
    analyze=analyze,
    seeds=5,
    stack=30,
))
