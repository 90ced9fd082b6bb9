r"""Reproduction 1, ``decoupling``: the AdamW paper's separable lr × λ landscape.

**Claim** (Loshchilov & Hutter, ICLR 2019, Fig. 2): with Adam + L2 the region of good
(learning rate, weight decay) pairs is a diagonal — the best λ depends on lr — while with
decoupled weight decay (AdamW, decay ``η_t·λ`` per step in the paper's convention) it is
axis-aligned, so lr and λ can be tuned one at a time.

**Test.** The sweep (``specs/decoupling.toml``; ``decoupling-paper.toml`` for the paper's
26 2x64d ResNet on CIFAR-10, 100 epochs) trains Adam+L2, AdamW in the paper's convention and, for
comparison, AdamW in torch's convention (decay ``lr_t·λ``) over an lr × λ grid with 3 seeds. For
each method and each seed, the separability score of the seed's own grid
(:func:`decaylab.report.analysis.separability`: the fraction of the smallest lr-set × λ-set
rectangle around the good region that is good; 1.0 for a rectangle, about 1/n for a diagonal band),
with the good region the cells within :data:`DELTA` of the best validation error (test error in a store
from before runs recorded validation); the test accuracy is reported for the selected cell. The same score of the
seed-averaged grid and the diagonal slope ``d log λ* / d log lr`` (0 axis-aligned, ±1 diagonal) are
stated beside it.

**Verdict.** With ``d_s = sep(AdamW, seed s) − sep(Adam+L2, seed s)``: HELD when every ``d_s > 0``
and the seed-averaged grids agree; DID NOT HOLD when the mean of ``d_s`` is ``≤ 0``; else
INCONCLUSIVE (the seeds disagree).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..report.analysis import MethodGrid, build_grids, choose_metric, diagonal_slope, good_region, separability
from ..report.build import Section
from ..report.figures import format_number
from ..store import load_sweep
from .core import Reproduction, Verdict, register
from .stats import mean_std, pm, verdict_line

__all__ = ["REPRODUCTION", "analyze", "judge", "DELTA", "DECOUPLED", "COUPLED", "TORCH"]

#: Tolerance of the good region (validation error, 0.02 = 2 points): per-seed grids on 1,000
#: examples are noisy by about 1.5 points, so a 1-point region is often one lucky cell.
DELTA = 0.02
COUPLED = "Adam+L2"
DECOUPLED = "AdamW (paper)"
TORCH = "AdamW (torch)"


def _grids(runs: list[Any], per_model: Any) -> dict[str, MethodGrid]:
    """Each method's grid on the selection metric (validation error; test error in an older store)."""
    return {grid.label: grid for grid in build_grids(runs, choose_metric(runs), per_model)}


def _scores(grid: MethodGrid) -> dict[str, float]:
    return {
        "separability": separability(grid.error, DELTA),
        "good_cells": int(good_region(grid.error, DELTA).sum()),
        "slope": diagonal_slope(grid.error, grid.lrs, grid.weight_decays),
        "best_acc": float(grid.acc_mean[grid.best]) if grid.best is not None else math.nan,  # test, selected cell
    }


def judge(per_seed: dict[str, list[float]], mean_grid: dict[str, float]) -> tuple[bool | None, dict[str, Any]]:
    """The verdict from each method's per-seed separability scores and its seed-averaged grid's score.

    >>> judge({"AdamW (paper)": [1.0, 0.8, 0.9], "Adam+L2": [0.3, 0.4, 0.5]},
    ...       {"AdamW (paper)": 0.9, "Adam+L2": 0.4})[0]
    True
    >>> judge({"AdamW (paper)": [0.3, 0.4, 0.5], "Adam+L2": [1.0, 0.8, 0.9]},
    ...       {"AdamW (paper)": 0.4, "Adam+L2": 0.9})[0]
    False
    """
    w, l2 = per_seed[DECOUPLED], per_seed[COUPLED]
    diffs = [a - b for a, b in zip(w, l2, strict=True) if math.isfinite(a) and math.isfinite(b)]
    diff_mean, diff_std = mean_std(diffs)
    mean_diff = mean_grid[DECOUPLED] - mean_grid[COUPLED]
    if not diffs:
        held = None
    elif all(d > 0 for d in diffs) and mean_diff > 0:
        held = True
    elif diff_mean <= 0:
        held = False
    else:
        held = None
    return held, {"diff_mean": diff_mean, "diff_std": diff_std, "diffs": diffs, "mean_grid_diff": mean_diff}


def analyze(store_path: str | Path, spec: Any, scale: str) -> Verdict:
    data = load_sweep(store_path, spec.name)
    seeds = sorted({run.config["seed"] for run in data.runs})
    mean_grids = _grids(data.runs, data.per_model)
    missing = [label for label in (COUPLED, DECOUPLED) if label not in mean_grids]
    if missing:
        raise ValueError(f"the sweep {spec.name!r} has no finished runs of {missing}; the verdict compares "
                         f"{COUPLED!r} and {DECOUPLED!r}")
    labels = [label for label in spec.methods if label in mean_grids]
    per_seed: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    for seed in seeds:
        grids = _grids([run for run in data.runs if run.config["seed"] == seed], data.per_model)
        for label in labels:
            per_seed[label].append(_scores(grids[label]) if label in grids else _scores_nan())
    mean_scores = {label: _scores(mean_grids[label]) for label in labels}
    held, margin = judge({label: [s["separability"] for s in per_seed[label]] for label in labels},
                         {label: mean_scores[label]["separability"] for label in labels})

    def seps(label: str) -> tuple[float, float]:
        return mean_std(s["separability"] for s in per_seed[label] if math.isfinite(s["separability"]))

    w, l2 = seps(DECOUPLED), seps(COUPLED)
    text = (f"separability {DECOUPLED} {pm(*w)} vs {COUPLED} {pm(*l2)} over {len(seeds)} seeds "
            f"(per-seed difference {pm(margin['diff_mean'], margin['diff_std'], '+.2f')}; seed-averaged grids "
            f"{mean_scores[DECOUPLED]['separability']:.2f} vs {mean_scores[COUPLED]['separability']:.2f}); "
            f"diagonal slope {mean_scores[DECOUPLED]['slope']:+.2f} vs {mean_scores[COUPLED]['slope']:+.2f}")
    if TORCH in mean_scores:
        text += f"; {TORCH}: separability {pm(*seps(TORCH))}, slope {mean_scores[TORCH]['slope']:+.2f}"
    line = verdict_line("decoupling", held, text)

    numbers = {
        "delta": DELTA, "seeds": seeds, "held": held, **{k: v for k, v in margin.items()},
        "methods": {label: {
            "separability_per_seed": [s["separability"] for s in per_seed[label]],
            "separability_mean_std": list(seps(label)),
            "good_cells_per_seed": [s["good_cells"] for s in per_seed[label]],
            "slope_per_seed": [s["slope"] for s in per_seed[label]],
            "mean_grid": mean_scores[label],
        } for label in labels},
    }
    sections = _sections(labels, per_seed, mean_scores, mean_grids, seeds, choose_metric(data.runs))
    return Verdict("decoupling", held, line, numbers, sections)


def _scores_nan() -> dict[str, float]:
    return {"separability": math.nan, "good_cells": 0, "slope": math.nan, "best_acc": math.nan}


def _sections(labels, per_seed, mean_scores, mean_grids, seeds, metric) -> list[Section]:
    table = []
    for label in labels:
        sep = mean_std(s["separability"] for s in per_seed[label] if math.isfinite(s["separability"]))
        slope = mean_std(s["slope"] for s in per_seed[label] if math.isfinite(s["slope"]))
        table.append({
            "method": label,
            "separability per seed": ", ".join(f"{s['separability']:.2f}" for s in per_seed[label]),
            "separability (mean ± std)": pm(*sep),
            "good cells per seed": ", ".join(str(s["good_cells"]) for s in per_seed[label]),
            "slope (mean ± std)": pm(*slope, "+.2f"),
            "seed-averaged grid: separability": f"{mean_scores[label]['separability']:.2f}",
            "slope": f"{mean_scores[label]['slope']:+.2f}",
            "test acc of the selected cell (%)": f"{100 * mean_scores[label]['best_acc']:.1f}",
        })
    prose = (
        f"Each method's separability is computed on each seed's own lr × λ grid (good region: "
        f"{metric.replace('_', ' ').replace('val ', 'validation ')} within "
        f"{100 * DELTA:g} points of that grid's best cell), then averaged over the {len(seeds)} seeds; the seed-"
        "averaged grid (the heatmaps above, drawn with the report's 1-point δ) is scored too. 1.0 means the good "
        "region is a rectangle (tune lr and λ one at a time), about 1/n a diagonal band across n learning rates. "
        "The diagonal slope is d log λ*/d log lr of each learning rate's best λ: 0 axis-aligned, −1 a fixed "
        "product lr·λ is best, +1 a fixed ratio λ/lr.\n\n"
        f"The claim concerns {DECOUPLED} (decay η_t·λ per step, λ independent of lr); {TORCH} (decay lr_t·λ) is "
        "shown for comparison: its λ axis is the paper's divided by lr, which adds −1 to the slope."
    )
    return [Section("Decoupling: is the good region axis-aligned?", prose,
                    figures=[("Separability per seed (dots) and mean ± std (bars), per method.",
                              _separability_figure(labels, per_seed)),
                             ("Best λ of each learning rate (seed-averaged grid; marker size: how far that row's best "
                              "is from the grid's best). A flat line is axis-aligned, a slanted one diagonal.",
                              _best_lambda_figure(labels, mean_grids))],
                    table=table)]


def _separability_figure(labels, per_seed):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 3.2), layout="constrained")
    ax = figure.subplots()
    for k, label in enumerate(labels):
        values = [s["separability"] for s in per_seed[label] if math.isfinite(s["separability"])]
        if not values:
            continue
        mean, std = mean_std(values)
        ax.bar(k, mean, color=f"C{k}", alpha=0.35, yerr=std if math.isfinite(std) else None, capsize=4)
        ax.scatter([k + 0.12 * (j - (len(values) - 1) / 2) for j in range(len(values))], values, color=f"C{k}",
                   zorder=3, s=18)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"separability (δ = {100 * DELTA:g} points)")
    ax.grid(axis="y", alpha=0.3)
    return figure


def _best_lambda_figure(labels, grids):
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    figure = Figure(figsize=(4.2 * len(labels), 3.4), layout="constrained")
    axes = figure.subplots(1, len(labels), squeeze=False)[0]
    for k, (ax, label) in enumerate(zip(axes, labels, strict=True)):
        grid = grids[label]
        finite = np.isfinite(grid.error)
        best = np.nanmin(np.where(finite, grid.error, np.nan))
        xs, ys, gaps = [], [], []
        for i, lr in enumerate(grid.lrs):
            if not finite[i].any():
                continue
            j = int(np.argmin(np.where(finite[i], grid.error[i], np.inf)))
            xs.append(lr)
            ys.append(grid.weight_decays[j])
            gaps.append(100 * (grid.error[i, j] - best))
        sizes = [max(12.0, 90.0 - 15.0 * g) for g in gaps]
        ax.plot(xs, ys, color=f"C{k}", linewidth=1)
        ax.scatter(xs, ys, s=sizes, color=f"C{k}", zorder=3)
        for x, y, g in zip(xs, ys, gaps, strict=True):
            ax.annotate(f"+{g:.1f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_xticks(grid.lrs, [format_number(x) for x in grid.lrs])
        ax.xaxis.set_minor_formatter(NullFormatter())
        positive = [y for y in ys if y > 0]
        if positive:
            ax.set_yscale("log")
            ax.set_ylim(min(grid.weight_decays[grid.weight_decays > 0]) / 2, max(grid.weight_decays) * 2)
        ax.set_xlabel("learning rate")
        convention = {"lr": "torch", "schedule": "paper"}.get(grid.config.get("decay_scale"), "?")
        ax.set_ylabel(f"best λ ({convention} convention)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    return figure


REPRODUCTION = register(Reproduction(
    name="decoupling",
    title="Adam+L2 has a diagonal lr × λ landscape, AdamW an axis-aligned one",
    claim="With Adam+L2 the good (lr, λ) region is a diagonal; with decoupled weight decay (AdamW, paper "
          "convention) it is axis-aligned, so lr and λ tune separately. Verdict: separability of each per seed.",
    source="Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019, Fig. 2",
    analyze=analyze,
    stack=25,
))
