r"""Reproduction 2, ``early-decay``: weight decay matters early in training, not late.

**Claim** (Golatkar, Achille & Soatto, NeurIPS 2019; Bjorck, Weinberger & Gomes, AAAI 2021):
weight decay applied only during the early part of training recovers most of the test-error benefit
that decay throughout has over no decay, while the same decay applied later recovers much less.

**Design** (``specs/early-decay.toml``; ``early-decay-paper.toml`` for PreAct-ResNet-18 on CIFAR-10).
The run is a large-lr phase followed by a common annealing phase (the lr drops) in which *no* arm
decays. Inside the large-lr phase four arms differ only in *when* the decay acts:

==============  =============================================================
``no decay``    λ = 0
``full decay``  λ over the whole large-lr phase (``decay_window:0-P``)
``early decay`` 2λ over its first half (``decay_window:0-P/2``)
``late decay``  2λ over its second half (``decay_window:P/2-P``)
==============  =============================================================

so early and late decay have the **same integrated decay** ``Σ_t s_t·λ_t`` (e-folds; ``s_t = lr_t`` in
torch's convention) as full decay: "late" is not built to do less. (The earlier design switched late
decay on at the lr drop, which gave it 0.21 e-folds against early decay's 3.72.) :func:`integrated_decay`
recomputes every run's integrated decay from its config; that they match is a premise.

**Statistic** (fixed in the spec's ``[claim]`` before any verdict was read). Per seed, the gain of an
arm over no decay is ``g_x = E_none − E_x`` (final test error; the arms are fixed, so nothing is
selected: the lr and λ come from a validation pilot, see the spec). Recovering "most" of full decay's
benefit means ``g_x > m·g_full`` with ``m = [claim] most`` (0.5). Two paired per-seed effects, each
judged by its 95 % Student-t interval against 0 (:func:`~decaylab.reproduce.stats.against`):

- early recovers most:  ``g_early − m·g_full`` (True when the interval lies above 0);
- late recovers less:   ``m·g_full − g_late`` (True when the interval lies above 0).

HELD when both are True; DID NOT HOLD when either is False (its interval lies wholly on the wrong side);
otherwise undecided, and :meth:`~decaylab.reproduce.core.Reproduction.run` adds seeds up to
``max_seeds``. The recovered fractions ``mean g_x / mean g_full`` are reported.

**Premises** (PREMISE NOT MET, naming which, when one fails): full decay's mean gain over no decay is
at least ``[claim] min_benefit`` (else there is nothing to recover); the integrated decay of early and
late decay matches full decay's within ``[claim] decay_tolerance`` (relative); it is at least
``[claim] min_efolds`` e-folds (decay that does nothing cannot matter early or late); every run fits its
training set to at least ``[claim] train_acc``; and ≥ 3 seeds.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..report import figures as fig
from ..report.build import Section
from ..store import load_curves
from . import _regimes as R
from . import stats as S
from ._regimes import integrated_decay
from .core import Reproduction, Verdict, claim_numbers, register

__all__ = ["REPRODUCTION", "ARMS", "LABELS", "analyze", "integrated_decay", "judge", "Judgement", "CLAIM_KEYS"]

NAME = "early-decay"
ARMS = ("none", "full", "early", "late")
LABELS = {"none": "no decay", "full": "full decay", "early": "early decay", "late": "late decay"}
#: The keys the spec's ``[claim]`` table must hold (besides max_seeds and seed_step).
CLAIM_KEYS = ("most", "min_benefit", "decay_tolerance", "min_efolds", "train_acc")


# ----------------------------------------------------------------------------------------------- measures


# ----------------------------------------------------------------------------------------------- the verdict


@dataclass
class Judgement:
    """What :func:`judge` decides from per-seed test errors; plain data for the verdict."""

    held: bool | None
    premises: list[S.Premise]
    seeds: list[int]
    gains: dict[str, list[float]]  # arm -> per-seed gain over no decay (fraction of examples)
    benefit: S.Interval  # full decay's gain
    early_part: S.Interval  # g_early − most·g_full
    late_part: S.Interval  # most·g_full − g_late
    parts: tuple[bool | None, bool | None]
    recovered: dict[str, float] = field(default_factory=dict)  # arm -> mean g_x / mean g_full


def judge(errors: Mapping[str, Mapping[int, float]], *, most: float, min_benefit: float) -> Judgement:
    """The verdict from per-seed final test errors ``errors[arm][seed]`` of the four :data:`ARMS`.

    >>> e = {"none": {0: .30, 1: .31, 2: .29}, "full": {0: .26, 1: .27, 2: .25},
    ...      "early": {0: .265, 1: .27, 2: .255}, "late": {0: .30, 1: .30, 2: .285}}
    >>> judge(e, most=0.5, min_benefit=0.01).held
    True
    >>> e["early"], e["late"] = e["late"], e["early"]
    >>> judge(e, most=0.5, min_benefit=0.01).held
    False
    """
    seeds = sorted(set.intersection(*(set(errors.get(a, {})) for a in ARMS)))
    gains = {a: [errors["none"][s] - errors[a][s] for s in seeds] for a in ("full", "early", "late")}
    benefit = S.interval(gains["full"])
    early = S.interval(ge - most * gf for ge, gf in zip(gains["early"], gains["full"], strict=True))
    late = S.interval(most * gf - gl for gl, gf in zip(gains["late"], gains["full"], strict=True))
    parts = (S.against(early, 0.0), S.against(late, 0.0))
    mean_full = benefit.mean
    recovered = {a: (sum(g) / len(g) / mean_full if g and mean_full else math.nan) for a, g in gains.items()}
    premises = [S.Premise.at_least(
        "full decay's gain over no decay (test error, points)", 100 * mean_full if seeds else math.nan,
        100 * min_benefit, "mean over seeds of E_none − E_full; below it there is no benefit to recover")]
    if len(seeds) < S.MIN_SEEDS:
        premises.append(S.Premise.at_least("seeds", len(seeds), S.MIN_SEEDS,
                                           f"{len(seeds)} seeds with all four arms; a verdict needs {S.MIN_SEEDS}"))
    held = S.combine(parts) if all(p.held for p in premises) else None
    return Judgement(held, premises, seeds, gains, benefit, early, late, parts, recovered)


def _arm(run: Any) -> str | None:
    return {v: k for k, v in LABELS.items()}.get(run.label)


def analyze(store_path: str | Path, spec: Any, scale: str) -> Verdict:
    claim = claim_numbers(spec, CLAIM_KEYS)
    runs = [r for r in R.finished_runs(store_path, spec.name) if _arm(r) is not None]
    cells = R.by_cell(runs, _arm)
    missing = [LABELS[a] for a in ARMS if len(cells.get(a, [])) == 0]
    if missing:
        return Verdict(NAME, None, S.verdict_line(NAME, None, f"no finished runs of {', '.join(missing)}"),
                       {"runs": len(runs)})
    errors = {a: {r.config["seed"]: 1.0 - R.accuracy(r, "test_acc") for r in cells[a]} for a in ARMS}
    val_errors = {a: {r.config["seed"]: 1.0 - R.accuracy(r, "val_acc") for r in cells[a]} for a in ARMS}
    j = judge(errors, most=claim["most"], min_benefit=claim["min_benefit"])

    # the integrated decay of each arm (e-folds), from the configs: the same for every seed of an arm
    efolds = {a: integrated_decay(cells[a][0].config, _steps(cells[a][0])) for a in ARMS}
    mismatch = max(abs(efolds[a] / efolds["full"] - 1.0) for a in ("early", "late")) if efolds["full"] > 0 \
        else math.inf
    min_train = min(R.accuracy(r, "train_acc") for r in runs)
    worst = min(runs, key=lambda r: R.accuracy(r, "train_acc"))
    premises = [
        j.premises[0],
        S.Premise.at_most("integrated decay of early and late vs full (relative difference)", mismatch,
                          claim["decay_tolerance"],
                          "Σ_t lr_t·λ_t (e-folds) " + ", ".join(f"{a} {efolds[a]:.2f}" for a in ARMS[1:])),
        S.Premise.at_least("integrated decay of full decay (e-folds)", efolds["full"], claim["min_efolds"],
                           "Σ_t lr_t·λ_t over the run"),
        S.Premise.at_least("train accuracy (every run)", min_train, claim["train_acc"],
                           f"lowest: {worst.label}, seed {worst.config['seed']}"),
        *j.premises[1:],
    ]
    held = j.held if all(p.held for p in premises) else None

    n = len(j.seeds)
    pts = 100.0
    err_text = " / ".join(f"{a} {_pct(errors[a])}" for a in ARMS)
    setting = (f"{n} seeds; early and late decay at {efolds['early']:.2f} / {efolds['late']:.2f} e-folds, "
               f"full {efolds['full']:.2f}; test error")
    if any(not p.held for p in premises):
        line = f"{NAME}: {S.PREMISE_NOT_MET} — {S.premises_line(premises)} ({setting})"
    else:
        most = claim["most"]
        line = S.verdict_line(NAME, held, (
            f"full decay gains {_iv(j.benefit, pts)} points of test error over no decay; early decay recovers "
            f"{100 * j.recovered['early']:.0f}% of it, late decay {100 * j.recovered['late']:.0f}% at equal "
            f"integrated decay; g_early − {most:g}·g_full {_iv(j.early_part, pts)} ({S.word(j.parts[0])}), "
            f"{most:g}·g_full − g_late {_iv(j.late_part, pts)} ({S.word(j.parts[1])}) [points; test error "
            f"{err_text}] ({setting})"))
    norms = {a: {r.config["seed"]: R.value(r, "weight_norm") for r in cells[a]} for a in ARMS}
    numbers = {
        "seeds": j.seeds, "metric": "final test error (no selection: the arms are fixed by the spec)",
        "claim": claim, "integrated_decay_efolds": efolds,
        "benefit_full": j.benefit.plain(), "early_part": j.early_part.plain(), "late_part": j.late_part.plain(),
        "parts": {"early recovers most": j.parts[0], "late recovers less": j.parts[1]},
        "recovered": {a: S.finite_or_none(v) for a, v in j.recovered.items()},
        "gains_per_seed": j.gains,
        "test_error": {a: [errors[a][s] for s in sorted(errors[a])] for a in ARMS},
        "val_error": {a: [val_errors[a][s] for s in sorted(val_errors[a])] for a in ARMS},
        "weight_norm": {a: [norms[a][s] for s in sorted(norms[a])] for a in ARMS},
        "min_train_acc": min_train,
    }
    curves = load_curves(store_path, [r.id for r in runs])
    sections = _sections(cells, errors, val_errors, norms, efolds, j, curves, claim)
    return Verdict(NAME, held, line, numbers, sections, premises=premises, seeds=n)


def _steps(run: Any) -> int:
    """The run's length in steps: recorded in its final metrics, else recomputed from its config."""
    if run.final.get("steps"):
        return int(run.final["steps"])
    from ..train.config import TrainConfig
    from ..train.loop import total_steps

    return total_steps(TrainConfig.from_dict(run.config))


def _pct(per_seed: Mapping[int, float]) -> str:
    return S.pm(*(100 * v for v in S.mean_std(per_seed.values())), ".1f")


def _iv(interval: S.Interval, scale: float = 1.0) -> str:
    return interval.scaled(scale).text("+.2f")


def _sections(cells, errors, val_errors, norms, efolds, j, curves, claim) -> list[Section]:
    table = []
    for a in ARMS:
        gain = [errors["none"][s] - errors[a][s] for s in errors[a] if s in errors["none"]]
        val_gain = [val_errors["none"][s] - val_errors[a][s] for s in val_errors[a] if s in val_errors["none"]]
        table.append({
            "arm": LABELS[a], "decay window": ", ".join(cells[a][0].config.get("callbacks") or []) or "—",
            "λ": f"{cells[a][0].config['weight_decay']:g}", "integrated decay (e-folds)": f"{efolds[a]:.2f}",
            "test error (%)": _pct(errors[a]),
            "gain (points, test)": S.pm(*(100 * v for v in S.mean_std(gain)), "+.2f"),
            "gain (points, validation)": S.pm(*(100 * v for v in S.mean_std(val_gain)), "+.2f"),
            "recovered": "—" if a == "none" else f"{100 * j.recovered[a]:.0f}%",
            "train acc (min)": f"{min(R.accuracy(r, 'train_acc') for r in cells[a]):.2%}",
            "final ‖w‖": S.pm(*S.mean_std(norms[a].values()), ".1f"), "seeds": len(errors[a]),
        })
    prose = (
        "A large-lr phase, then a common annealing phase in which no arm decays. Full decay decays through the whole "
        "large-lr phase; early and late decay use twice its λ over the first or the second half of that phase, so "
        "all three have the same integrated decay Σ_t lr_t·λ_t (the e-folds column, recomputed from each run's "
        f"config). Gains are per-seed differences of final test error from no decay. The verdict: early decay "
        f"recovers more than {claim['most']:g} of full decay's gain and late decay less, each judged by the 95% "
        "Student-t interval of the paired per-seed effect (g_early − m·g_full, m·g_full − g_late) against 0. "
        f"Result: {S.word(j.held)}.")
    figures = [("Gain in test error over no decay per arm: each dot a seed, the bar the mean; the dashed line is "
                f"{claim['most']:g} of full decay's mean gain.", _gain_figure(j, claim["most"]))]
    series = _curves(cells, curves)
    if series:
        figures.append(("Weight norm and test error against the step (mean over seeds, band ±1 std).",
                        fig.curves_figure(series, [("weight_norm", "weight norm ‖w‖₂", False),
                                                   ("test_error", "test error (%)", False)],
                                          "No, full, early and late weight decay")))
    return [Section("Early and late weight decay at equal integrated decay", prose, figures=figures, table=table)]


def _gain_figure(j: Judgement, most: float):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0, 3.2), layout="constrained")
    ax = figure.subplots()
    arms = ("full", "early", "late")
    for k, a in enumerate(arms):
        g = [100 * x for x in j.gains[a]]
        if not g:
            continue
        ax.bar(k, sum(g) / len(g), color=f"C{k + 1}", alpha=0.5)
        ax.plot([k] * len(g), g, "o", color=f"C{k + 1}", markersize=3)
    if math.isfinite(j.benefit.mean):
        ax.axhline(100 * most * j.benefit.mean, color="k", linestyle="--", linewidth=1)
    ax.axhline(0, color="k", linewidth=0.5)
    ax.set_xticks(range(len(arms)), [LABELS[a] for a in arms])
    ax.set_ylabel("gain over no decay (points)")
    ax.grid(alpha=0.3, axis="y")
    return figure


def _curves(cells: Mapping[str, Sequence[Any]], curves: Mapping[int, Any]) -> dict[str, Any]:
    series = {}
    for a in ARMS:
        per_metric = {}
        for metric in ("weight_norm", "test_acc"):
            runs = [curves.get(r.id, {}).get(metric, []) for r in cells[a]]
            runs = [c for c in runs if c]
            if not runs:
                return {}
            per_metric[metric] = fig.mean_curve(runs)
        steps, mean, std, n = per_metric.pop("test_acc")
        per_metric["test_error"] = (steps, 100 * (1 - mean), 100 * std, n)
        series[LABELS[a]] = per_metric
    return series


REPRODUCTION = register(Reproduction(
    name=NAME,
    title="Weight decay only early recovers most of its benefit; the same decay late does not",
    claim="Weight decay during only the early part of training recovers most of the test-error benefit that decay "
          "throughout has over none, while the same integrated decay applied later recovers much less. Verdict: "
          "paired per-seed gains of early and late decay at equal integrated decay, before a common annealing phase.",
    source="Golatkar, Achille & Soatto, Time Matters in Regularizing Deep Networks, NeurIPS 2019; Bjorck, "
           "Weinberger & Gomes, Understanding Decoupled and Early Weight Decay, AAAI 2021",
    analyze=analyze,
    seeds=5,
))
