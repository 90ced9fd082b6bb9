r"""Reproduction 1, ``decoupling``: the AdamW paper's separable lr × λ landscape.

**Claim** (Loshchilov & Hutter, ICLR 2019, Fig. 2): with Adam + L2 the region of good
(learning rate, weight decay) pairs is a diagonal — the best λ depends on lr — while with
decoupled weight decay (AdamW, decay ``η_t·λ`` per step in the paper's convention) it is
axis-aligned, so lr and λ can be tuned one at a time.

**Setup** (``specs/decoupling.toml``; ``decoupling-paper.toml`` for CIFAR-10 on a GPU). The claim
lives where decay sets the effective learning rate: weights behind a normalization layer
(scale-invariant), trained long enough to over-fit without decay. So the MNIST-1D MLP with BatchNorm
(``mlp-bn``: its hidden weights are scale-invariant), lr and λ grids that bracket every optimum,
Adam+L2, AdamW in the paper's convention (the claim) and AdamW in torch's convention (decay
``lr_t·λ``: the same optimizer, its λ axis the paper's divided by lr — a comparison arm that should
come out diagonal, ``λ*_torch ∝ 1/lr``).

**Statistic** (fixed in the spec before the verdict was computed). For each method, the *rows where
λ matters*: the learning rates whose best λ beats the grid's smallest λ (no decay to speak of) by
at least ``[claim] min_gain`` in seed-mean validation loss. In each such row and each seed, ``λ*``
minimizes the validation loss over the λ grid, refined by a parabola in ``log λ`` through the best
point and its neighbours (:func:`~decaylab.reproduce.stats.row_optimum`); the seed's slope is the
least-squares slope of ``log λ*`` against ``log lr`` over the rows (:func:`method_slopes`): 0 is
axis-aligned, −1 a fixed product ``lr·λ``. The effect is paired per seed,
``e_s = |slope_s(Adam+L2)| − |slope_s(AdamW paper)|``; HELD when its 95% t-interval lies wholly
above ``[claim] threshold``, DID NOT HOLD when wholly below; undecided, seeds are added up to
``max_seeds`` (:func:`judge`).

**Premises** (PREMISE NOT MET, with which, when one fails): for Adam+L2 and AdamW (paper): the best
cell's lr is inside the lr grid; at least :data:`MIN_ROWS` rows where λ matters; every seed's λ* inside
the λ grid in those rows; the networks over-fit without decay (train accuracy at the best lr and the
smallest λ ≥ ``[claim] train_acc``); and for AdamW (paper), the λ grid starts near no decay (∫decay at
the smallest λ ≤ :data:`MAX_EFOLDS_OFF` e-folds) and the selected λ decays the weights by at least
``[claim] min_efolds`` e-folds (the regime where the scale-invariant weights reach their equilibrium).

Validation selects everywhere (the validation loss, smoother than the error on 1,000 signals); the
test accuracy is reported for the cell validation selected.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..report.build import Section
from . import _regimes as R
from . import stats as S
from ._regimes import integrated_decay
from .core import Reproduction, Verdict, claim_numbers, register

__all__ = ["REPRODUCTION", "analyze", "judge", "method_slopes", "integrated_decay", "MethodSlopes", "Judgement",
           "COUPLED", "DECOUPLED", "TORCH", "CLAIM_KEYS", "MIN_ROWS", "MAX_EFOLDS_OFF"]

NAME = "decoupling"
COUPLED = "Adam+L2"
DECOUPLED = "AdamW (paper)"
TORCH = "AdamW (torch)"
#: The keys the spec's ``[claim]`` table must hold (besides max_seeds and seed_step).
CLAIM_KEYS = ("threshold", "min_gain", "train_acc", "min_efolds")
#: A slope needs at least this many rows (learning rates) where λ matters.
MIN_ROWS = 3
#: The smallest λ of the decoupled grid counts as "no decay" when it decays the weights by at most this many e-folds.
MAX_EFOLDS_OFF = 0.5

Cell = tuple[float, float, int]  # (lr, λ, seed)


# ----------------------------------------------------------------------------------------------- statistics


@dataclass
class MethodSlopes:
    """One method's grid read as the claim reads it (plain data for the verdict)."""

    label: str
    lrs: list[float]
    lams: list[float]
    seeds: list[int]
    mean: dict[tuple[float, float], float]  # (lr, λ) -> seed-mean validation loss
    best: tuple[float, float]  # the (lr, λ) cell with the lowest seed-mean validation loss
    gains: dict[float, float]  # lr -> seed-mean loss at the smallest λ minus at the row's best λ
    rows: list[float]  # the learning rates where λ matters (gain ≥ min_gain)
    optima: dict[float, list[float | None]]  # lr -> λ* per seed (None: on an end of the λ grid), rows used
    slopes: list[float]  # per seed, over the rows used (nan when fewer than 2 interior optima)
    edges: list[tuple[float, int]] = field(default_factory=list)  # (lr, seed) rows whose λ* is on an end
    derived_from: str | None = None  # the label of the runs it re-reads (AdamW (torch) from AdamW (paper))

    @property
    def best_lr_inside(self) -> bool:
        return self.lrs[0] < self.best[0] < self.lrs[-1]

    def slope(self) -> S.Interval:
        return S.interval(self.slopes)

    def geomean_optimum(self, lr: float) -> float:
        xs = [x for x in self.optima.get(lr, []) if x is not None]
        return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else math.nan

    def plain(self) -> dict[str, Any]:
        return {
            "lrs": self.lrs, "lams": self.lams, "best_cell": {"lr": self.best[0], "weight_decay": self.best[1]},
            "best_lr_inside": self.best_lr_inside,
            "gain_per_lr": {f"{lr:g}": round(g, 5) for lr, g in self.gains.items()},
            "rows_used": self.rows,
            "optimum_per_row": {f"{lr:g}": [None if x is None else round(x, 8) for x in v]
                                for lr, v in self.optima.items()},
            "slope_per_seed": [S.finite_or_none(round(s, 5)) for s in self.slopes],
            "slope": self.slope().plain(), "edges": [list(e) for e in self.edges],
            "derived_from": self.derived_from,
        }

    def in_torch_convention(self) -> MethodSlopes:
        """The same runs read with ``λ_torch = λ_paper/lr`` (AdamW's two conventions are one optimizer:
        decay ``lr_t·λ_torch = (lr_t/lr)·λ_paper`` per step), so every λ* is divided by its lr and every
        slope falls by exactly 1.

        >>> m = MethodSlopes("AdamW (paper)", [0.01, 0.02], [1e-3, 1e-2], [0], {}, (0.01, 1e-3), {}, [0.01, 0.02],
        ...                  {0.01: [2e-3], 0.02: [2e-3]}, [0.0])
        >>> t = m.in_torch_convention()
        >>> t.label, t.optima, t.slopes
        ('AdamW (torch)', {0.01: [0.2], 0.02: [0.1]}, [-1.0])
        """
        return MethodSlopes(
            TORCH, self.lrs, sorted({lam / lr for lr in self.lrs for lam in self.lams}), self.seeds,
            {(lr, lam / lr): v for (lr, lam), v in self.mean.items()}, (self.best[0], self.best[1] / self.best[0]),
            self.gains, self.rows, {lr: [None if x is None else x / lr for x in v] for lr, v in self.optima.items()},
            [x - 1.0 for x in self.slopes], self.edges, derived_from=self.label)


def _grid(losses: Mapping[Cell, float]) -> tuple[list[float], list[float], list[int]]:
    lrs = sorted({k[0] for k in losses})
    lams = sorted({k[1] for k in losses})
    seeds = sorted({k[2] for k in losses})
    missing = [(lr, lam, s) for lr in lrs for lam in lams for s in seeds if (lr, lam, s) not in losses]
    if missing:
        raise ValueError(f"the grid is not complete: {len(missing)} runs missing, e.g. (lr, λ, seed) = {missing[0]}")
    return lrs, lams, seeds


def _finite(x: float | None) -> float:
    return float(x) if x is not None and math.isfinite(x) else math.inf  # a diverged run is the worst


def method_slopes(label: str, losses: Mapping[Cell, float], *, min_gain: float) -> MethodSlopes:
    """The rows where λ matters, each seed's interpolated ``λ*`` in them, and each seed's slope of
    ``log λ*`` against ``log lr`` (see the module docstring), from validation losses
    ``(lr, λ, seed) -> loss`` of a complete grid.

    >>> losses = {(lr, lam, s): (math.log(lam * lr) - math.log(1e-4)) ** 2 + 0.01 * s
    ...           for lr in (0.01, 0.02, 0.04) for lam in (1e-4, 1e-3, 1e-2, 1e-1, 1.0) for s in range(3)}
    >>> m = method_slopes("toy", losses, min_gain=0.1)
    >>> m.rows, [round(s, 6) for s in m.slopes]    # λ* = 1e-4/lr: a diagonal
    ([0.01, 0.02, 0.04], [-1.0, -1.0, -1.0])
    """
    lrs, lams, seeds = _grid(losses)
    mean = {(lr, lam): sum(_finite(losses[(lr, lam, s)]) for s in seeds) / len(seeds) for lr in lrs for lam in lams}
    best = min(mean, key=mean.__getitem__)
    gains = {lr: mean[(lr, lams[0])] - min(mean[(lr, lam)] for lam in lams) for lr in lrs}
    rows = [lr for lr in lrs if math.isfinite(gains[lr]) and gains[lr] >= min_gain]
    optima: dict[float, list[float | None]] = {}
    edges = []
    for lr in rows:
        optima[lr] = [S.row_optimum(lams, [_finite(losses[(lr, lam, s)]) for lam in lams]) for s in seeds]
        edges += [(lr, s) for s, x in zip(seeds, optima[lr], strict=True) if x is None]
    slopes = []
    for i in range(len(seeds)):
        points = [(lr, optima[lr][i]) for lr in rows if optima[lr][i] is not None]
        slopes.append(S.log_slope([p[0] for p in points], [p[1] for p in points]) if len(points) >= 2 else math.nan)
    return MethodSlopes(label, lrs, lams, seeds, mean, best, gains, rows, optima, slopes, edges)


@dataclass
class Judgement:
    """What :func:`judge` decides; plain data for the verdict."""

    held: bool | None
    premises: list[S.Premise]
    methods: dict[str, MethodSlopes]
    effect: S.Interval | None = None
    effects: list[float] = field(default_factory=list)  # per seed: |slope L2| − |slope AdamW (paper)|

    @property
    def premise_failed(self) -> list[str]:
        return [p.name for p in self.premises if not p.held]


def judge(losses: Mapping[str, Mapping[Cell, float]], train_acc: Mapping[str, Mapping[Cell, float]],
          efolds: Mapping[tuple[float, float], float], claim: Mapping[str, Any]) -> Judgement:
    """The verdict from each method's validation losses ``label -> (lr, λ, seed) -> loss`` (Adam+L2 and
    AdamW (paper) needed; others are read the same way and reported), the train accuracies of the same
    cells, the integrated decay of AdamW (paper)'s cells ``(lr, λ) -> e-folds``, and the spec's
    ``[claim]`` (``threshold``, ``min_gain``, ``train_acc``, ``min_efolds``)."""
    missing = [label for label in (COUPLED, DECOUPLED) if label not in losses]
    if missing:
        raise ValueError(f"the verdict compares {COUPLED!r} and {DECOUPLED!r}; no finished runs of {missing}")
    methods = {label: method_slopes(label, grid, min_gain=claim["min_gain"]) for label, grid in losses.items()}
    judged = [methods[COUPLED], methods[DECOUPLED]]
    premises = []
    for m in judged:
        premises.append(S.Premise(
            f"best lr inside the lr grid ({m.label})", m.best[0], f"inside [{m.lrs[0]:g}, {m.lrs[-1]:g}]",
            m.best_lr_inside, f"the cell with the lowest seed-mean validation loss: lr {m.best[0]:g}, "
                              f"λ {m.best[1]:g}"))
    for m in judged:
        premises.append(S.Premise.at_least(
            f"rows where λ matters ({m.label})", len(m.rows), MIN_ROWS,
            f"learning rates whose best λ beats the smallest λ by ≥ {claim['min_gain']:g} in seed-mean validation "
            f"loss: {', '.join(f'{lr:g}' for lr in m.rows) or 'none'}"))
    edges = [(m.label, lr, s) for m in judged for lr, s in m.edges]
    premises.append(S.Premise.at_most(
        "λ* on an end of the λ grid in the rows used", len(edges), 0,
        f"{len(edges)} of {sum(len(m.rows) * len(m.seeds) for m in judged)} (method, lr, seed) rows"
        + (f", e.g. {edges[0]}" if edges else "")))
    fits = []
    for m in judged:
        acc = train_acc[m.label]
        fits.append((sum(acc[(m.best[0], m.lams[0], s)] for s in m.seeds) / len(m.seeds), m.label))
    worst = min(fits)
    premises.append(S.Premise.at_least(
        "train accuracy without decay at the best lr", worst[0], claim["train_acc"],
        "seed-mean train accuracy at the best lr and the smallest λ (over-fitting without decay): "
        + ", ".join(f"{label} {acc:.4f}" for acc, label in fits)))
    w = methods[DECOUPLED]
    off, on = efolds[(w.best[0], w.lams[0])], efolds[w.best]
    premises.append(S.Premise.at_most(
        f"integrated decay at the smallest λ ({DECOUPLED}, e-folds)", off, MAX_EFOLDS_OFF,
        f"Σ_t s_t·λ at the best lr {w.best[0]:g} and λ {w.lams[0]:g}: the grid starts near no decay"))
    premises.append(S.Premise.at_least(
        f"integrated decay at the selected λ ({DECOUPLED}, e-folds)", on, claim["min_efolds"],
        f"Σ_t s_t·λ of the selected cell (lr {w.best[0]:g}, λ {w.best[1]:g})"))
    out = Judgement(None, premises, methods)
    if len(w.seeds) < S.MIN_SEEDS:
        premises.append(S.Premise.at_least("seeds", len(w.seeds), S.MIN_SEEDS,
                                           f"{len(w.seeds)} seeds; a verdict needs {S.MIN_SEEDS}"))
    if out.premise_failed:
        return out
    l2 = dict(zip(methods[COUPLED].seeds, methods[COUPLED].slopes, strict=True))
    out.effects = [abs(l2[s]) - abs(x) for s, x in zip(w.seeds, w.slopes, strict=True) if s in l2]
    out.effect = S.interval(out.effects)
    out.held = S.against(out.effect, claim["threshold"])
    return out


# ----------------------------------------------------------------------------------------------- measures


# ----------------------------------------------------------------------------------------------- the verdict


def read(store_path: str | Path, spec: Any) -> tuple[dict[str, dict[Cell, float]], dict[str, dict[Cell, float]],
                                                    dict[str, dict[Cell, Any]]]:
    """``(val_loss, train_acc, run)`` per method label and ``(lr, λ, seed)`` cell, the spec's methods in order."""
    runs = R.finished_runs(store_path, spec.name)
    order = [label for label in spec.methods]
    losses: dict[str, dict[Cell, float]] = {}
    accs: dict[str, dict[Cell, float]] = {}
    by: dict[str, dict[Cell, Any]] = {}
    for run in sorted(runs, key=lambda r: order.index(r.label) if r.label in order else len(order)):
        key = (run.config["lr"], run.config["weight_decay"], run.config["seed"])
        value = run.final.get("val_loss")  # validation selects
        losses.setdefault(run.label, {})[key] = float(value) if value is not None else math.inf
        accs.setdefault(run.label, {})[key] = float(run.final.get("train_acc") or 0.0)
        by.setdefault(run.label, {})[key] = run
    return losses, accs, by


def analyze(store_path: str | Path, spec: Any, scale: str) -> Verdict:
    claim = claim_numbers(spec, CLAIM_KEYS)
    losses, accs, by = read(store_path, spec)
    if COUPLED not in losses or DECOUPLED not in losses:
        return Verdict(NAME, None, f"{NAME}: INCONCLUSIVE — the store has no finished runs of {COUPLED!r} and "
                                   f"{DECOUPLED!r}", {"runs": sum(map(len, losses.values()))})
    first = min(s for _, _, s in by[DECOUPLED])  # the decay a config applies is the same for every seed
    efolds = {(lr, lam): integrated_decay(run.config) for (lr, lam, s), run in by[DECOUPLED].items() if s == first}
    try:
        j = judge(losses, accs, efolds, claim)
    except ValueError as error:
        return Verdict(NAME, None, f"{NAME}: INCONCLUSIVE — {error}", {"runs": sum(map(len, losses.values()))})
    if TORCH not in j.methods and _same_decay(by[DECOUPLED]):  # not trained: the same runs in torch's convention
        j.methods[TORCH] = j.methods[DECOUPLED].in_torch_convention()
    seeds = j.methods[DECOUPLED].seeds
    config = next(iter(by[DECOUPLED].values())).config
    setting = (f"{len(seeds)} seeds, {config['model']} on {config['dataset']}, {config['epochs']:g} epochs, "
               f"{len(j.methods[DECOUPLED].lrs)} learning rates, selection on validation loss")
    slope_text = "; ".join(f"{label} {m.slope().text('+.2f').replace(' (95% t-interval', ' (95%')}"
                           for label, m in j.methods.items())
    if j.premise_failed:
        line = f"{NAME}: {S.PREMISE_NOT_MET} — {S.premises_line(j.premises)} ({setting})"
    else:
        line = S.verdict_line(NAME, j.held, (
            f"|slope| of log λ* against log lr, paired per seed: |{COUPLED}| − |{DECOUPLED}| = "
            f"{j.effect.text('+.2f')} against {claim['threshold']:g} (0 axis-aligned, 1 diagonal); slopes: "
            f"{slope_text} ({setting})"))
    table = _table(j, by)
    numbers = {
        "selection": "validation", "metric": "validation loss (val_loss); test accuracy is reported for the "
                                             "selected cell only",
        "claim": {k: claim[k] for k in CLAIM_KEYS}, "seeds": len(seeds),
        "effect": j.effect.plain() if j.effect else None, "effect_per_seed": [round(e, 5) for e in j.effects],
        "methods": {label: m.plain() for label, m in j.methods.items()},
        "efolds_selected": round(efolds[j.methods[DECOUPLED].best], 3), "table": table,
    }
    return Verdict(NAME, j.held, line, numbers, _sections(j, table, claim), premises=j.premises, seeds=len(seeds))


def _same_decay(runs: Mapping[Cell, Any]) -> bool:
    """Whether the runs are AdamW in the paper's convention (decoupled decay, decay_scale "schedule")."""
    return all(r.config.get("decay") == "decoupled" and r.config.get("decay_scale") == "schedule"
               for r in runs.values())


def _table(j: Judgement, by: Mapping[str, Mapping[Cell, Any]]) -> list[dict[str, Any]]:
    rows = []
    for label, m in j.methods.items():
        source = j.methods[m.derived_from] if m.derived_from else m
        test = S.Stat.of(by[source.label][(source.best[0], source.best[1], s)].final.get("test_acc")
                         for s in m.seeds)
        slope = m.slope()
        rows.append({
            "method": label + (f" (the {m.derived_from} runs, λ/lr)" if m.derived_from else ""),
            "rows where λ matters (lr)": ", ".join(f"{lr:g}" for lr in m.rows) or "none",
            "λ* per row (geomean over seeds)": ", ".join(f"{m.geomean_optimum(lr):.2g}" for lr in m.rows),
            "slope per seed": ", ".join(f"{s:+.2f}" for s in m.slopes),
            "slope (mean ± 95% t)": slope.text("+.2f").split(" (")[0],
            "best cell (lr, λ)": f"{m.best[0]:g}, {m.best[1]:.3g}",
            "test acc of the selected cell (%)": f"{100 * test.mean:.1f} ± {100 * test.std:.1f}",
        })
    return rows


def _sections(j: Judgement, table: list[dict[str, Any]], claim: Mapping[str, Any]) -> list[Section]:
    prose = (
        "Rows where λ matters: learning rates whose best λ beats the smallest λ of the grid by at least "
        f"{claim['min_gain']:g} in seed-mean validation loss. In each, λ* of each seed is the validation-loss "
        "minimum over the λ grid refined by a parabola in log λ; a seed's slope is the least-squares slope of "
        "log λ* against log lr over the rows: 0 when the best λ does not depend on lr (axis-aligned), −1 when "
        "lr·λ is fixed (a diagonal). The verdict reads the paired per-seed difference |slope Adam+L2| − "
        f"|slope AdamW (paper)| against {claim['threshold']:g}. AdamW (torch) is the same optimizer as AdamW "
        "(paper) with λ_torch = λ_paper/lr, which adds −1 to its slope.\n\nPremises: "
        + "; ".join(f"{p.text()} ({p.detail})" for p in j.premises) + ".")
    return [Section("Decoupling: does the best λ move with lr?", prose, table=table,
                    figures=[("λ* of each row where λ matters, per seed (dots) and their geometric mean (line); "
                              "a flat line is axis-aligned, a slope of −1 a fixed lr·λ.", optimum_figure(j.methods))])]


def optimum_figure(methods: Mapping[str, MethodSlopes]) -> Any:
    """λ* against lr, one panel per method: each seed's interpolated optimum and their geometric mean."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    cols = min(3, len(methods))
    rows = -(-len(methods) // cols)
    figure = Figure(figsize=(3.8 * cols, 3.3 * rows), layout="constrained")
    axes = list(figure.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[len(methods):]:
        ax.set_visible(False)
    for k, (ax, (label, m)) in enumerate(zip(axes, methods.items(), strict=False)):
        for lr in m.rows:
            ys = [x for x in m.optima[lr] if x is not None]
            ax.scatter([lr] * len(ys), ys, s=12, color=f"C{k}", alpha=0.6)
        xs = [lr for lr in m.rows if math.isfinite(m.geomean_optimum(lr))]
        ax.plot(xs, [m.geomean_optimum(lr) for lr in xs], color=f"C{k}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(m.lams[0], m.lams[-1])
        ax.set_xlabel("learning rate")
        ax.set_ylabel("λ* (its own convention)")
        slope = m.slope()
        ax.set_title(f"{label}: slope {slope.mean:+.2f}" if math.isfinite(slope.mean) else label, fontsize=9)
        ax.grid(alpha=0.3)
    return figure


def slope_summary(methods: Mapping[str, MethodSlopes]) -> str:
    """A plain-text table: per method, the rows used and the slope of log λ* against log lr per seed, with
    its mean ± 95% t-interval over the seeds."""
    head = ("method", "rows where λ matters (lr)", "slope of log λ* vs log lr (mean ± 95% t)", "per seed")
    rows = [(label, ", ".join(f"{lr:g}" for lr in m.rows) or "none", m.slope().text("+.2f").split(" (")[0],
             ", ".join(f"{x:+.2f}" for x in m.slopes)) for label, m in methods.items()]
    widths = [max(len(r[k]) for r in [head, *rows]) for k in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
                     for r in [head, *rows])


REPRODUCTION = register(Reproduction(
    name=NAME,
    title="Adam+L2 has a diagonal lr × λ landscape, AdamW an axis-aligned one",
    claim="With Adam+L2 the best λ moves with lr (a diagonal); with decoupled weight decay (AdamW, paper "
          "convention) it does not, so lr and λ tune separately. Verdict: the slope of log λ* against log lr "
          "per seed, |Adam+L2| − |AdamW| against a threshold.",
    source="Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019, Fig. 2",
    analyze=analyze,
    stack=48,
))
