r"""Reproduction 2, ``early-decay``: weight decay matters early, and the weight norm remembers it.

**Claim** (Golatkar, Achille & Soatto, NeurIPS 2019; Bjorck, Weinberger & Gomes, AAAI 2021):
applying weight decay only during the first part of training recovers most of the test-error
benefit that decay over the whole run has over no decay, while applying it only late does not; and
after early decay stops, the weight norm stays small (so the effective learning rate of
scale-invariant weights stays large).

**Test.** The sweep (``specs/early-decay.toml``; ``early-decay-paper.toml`` for PreAct-ResNet-18
on CIFAR-10) trains four methods labelled ``no decay``, ``early decay``, ``late decay`` and ``full
decay`` with the same lr and λ over several seeds; early and late decay switch at several
fractions of the run (the ``decay_window:...`` callback; older stores call the switch ``decay_switch``),
and the verdict is read at :data:`SWITCH`.

**Verdict.** With test errors ``E`` averaged over seeds, the benefit of full decay is
``B = E_none − E_full`` and early decay recovers ``R = (E_none − E_early) / B`` of it.
INCONCLUSIVE when ``B`` is not above twice its standard error over seeds (paired by seed): there is
no benefit to recover. Otherwise HELD when ``R ≥ 0.5`` and every seed ends early decay with a
smaller weight norm than no decay; DID NOT HOLD otherwise. Late decay's recovered fraction and the
weight-norm curves are reported beside it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..report import figures as fig
from ..report.build import Section
from ..store import load_curves, load_sweep
from .core import Reproduction, Verdict, register
from .stats import mean_std, pm, verdict_line, word

__all__ = ["REPRODUCTION", "analyze", "judge", "switch_of", "SWITCH", "LABELS", "MOST"]

SWITCH = 0.5  # the switch point (fraction of the run) the verdict is read at
MOST = 0.5  # "most of the benefit"
LABELS = {"none": "no decay", "early": "early decay", "late": "late decay", "full": "full decay"}


def judge(errors: dict[str, dict[int, float]], norms: dict[str, dict[int, float]]) -> tuple[bool | None, dict]:
    """The verdict from per-seed final test errors and weight norms of ``none``, ``early``, ``late``, ``full``.

    >>> e = {"none": {0: .30, 1: .31, 2: .29}, "full": {0: .25, 1: .26, 2: .25},
    ...      "early": {0: .26, 1: .26, 2: .26}, "late": {0: .29, 1: .30, 2: .29}}
    >>> n = {"none": {0: 40., 1: 41., 2: 39.}, "early": {0: 25., 1: 26., 2: 24.}}
    >>> judge(e, n)[0]
    True
    >>> e["early"] = {0: .30, 1: .30, 2: .29}
    >>> judge(e, n)[0]
    False
    """
    seeds = sorted(set(errors["none"]) & set(errors["full"]) & set(errors["early"]))
    gains = {key: [errors["none"][s] - errors[key][s] for s in seeds if s in errors[key]]
             for key in ("full", "early", "late") if key in errors}
    full_mean, full_std = mean_std(gains["full"])
    sem = full_std / math.sqrt(len(seeds)) if len(seeds) > 1 else math.nan

    def recovered(key: str) -> float:
        if key not in gains or not gains[key] or full_mean == 0:
            return math.nan
        return mean_std(gains[key])[0] / full_mean

    ratios = [norms["early"][s] / norms["none"][s] for s in seeds if s in norms["early"] and s in norms["none"]]
    numbers = {
        "seeds": seeds, "benefit_full": [full_mean, full_std], "benefit_sem": sem,
        "benefit_early": list(mean_std(gains["early"])), "benefit_late": list(mean_std(gains.get("late", []))),
        "recovered_early": recovered("early"), "recovered_late": recovered("late"),
        "norm_ratio_early_none": list(mean_std(ratios)), "norm_ratio_per_seed": ratios,
    }
    if not math.isfinite(sem) or full_mean <= 2 * sem:
        held = None
    else:
        held = numbers["recovered_early"] >= MOST and bool(ratios) and all(r < 1 for r in ratios)
    return held, numbers


def _method(run: Any) -> tuple[str, float | None] | None:
    names = {v: k for k, v in LABELS.items()}
    key = names.get(run.label)
    if key is None:
        return None
    switch = switch_of(run.config) if key in ("early", "late") else None
    return key, switch


def switch_of(config: dict[str, Any]) -> float | None:
    """Where a run's early or late decay switches, from its decay window (an older store's
    ``decay_schedule``/``decay_switch`` fields read as the window they were)."""
    from ..train.callbacks import DecayWindow, from_legacy, parse

    for text in from_legacy(config).get("callbacks", ()):
        callback = parse(text)
        if isinstance(callback, DecayWindow):
            legacy = callback.legacy()
            return None if legacy is None else legacy["decay_switch"]
    return None


def analyze(store_path: str | Path, spec: Any, scale: str) -> Verdict:
    data = load_sweep(store_path, spec.name)
    errors: dict[tuple[str, float | None], dict[int, float]] = {}
    norms: dict[tuple[str, float | None], dict[int, float]] = {}
    ids: dict[tuple[str, float | None], list[int]] = {}
    for run in data.runs:
        method = _method(run)
        if method is None:
            continue
        seed = run.config["seed"]
        acc = run.final.get("test_acc")
        errors.setdefault(method, {})[seed] = 1.0 - acc if acc is not None else math.inf
        norms.setdefault(method, {})[seed] = run.final["weight_norm"]
        ids.setdefault(method, []).append(run.id)
    at = {"none": ("none", None), "full": ("full", None), "early": ("early", SWITCH), "late": ("late", SWITCH)}
    missing = [LABELS[k] + (f" (switch {SWITCH})" if m[1] else "") for k, m in at.items() if m not in errors]
    if missing:
        raise ValueError(f"the sweep {spec.name!r} has no finished runs of {missing}")
    held, numbers = judge({k: errors[m] for k, m in at.items()}, {k: norms[m] for k, m in at.items()})
    b, sem = numbers["benefit_full"], numbers["benefit_sem"]
    ratio = numbers["norm_ratio_early_none"]
    n = len(numbers["seeds"])
    text = (f"test error none {_err(errors[at['none']])} / early {_err(errors[at['early']])} / late "
            f"{_err(errors[at['late']])} / full {_err(errors[at['full']])} % ({n} seeds, switch at {SWITCH:g} of the "
            f"run); full decay gains {pm(100 * b[0], 100 * b[1], '.1f')} points (2·s.e. {200 * sem:.1f}), early decay "
            f"recovers {100 * numbers['recovered_early']:.0f}% of it, late {100 * numbers['recovered_late']:.0f}%; "
            f"final ‖w‖ early/none {pm(*ratio)}")
    line = verdict_line("early-decay", held, text)
    numbers["errors"] = {f"{k}" + (f"@{s:g}" if s is not None else ""): [v[x] for x in sorted(v)]
                         for (k, s), v in errors.items()}
    numbers["weight_norms"] = {f"{k}" + (f"@{s:g}" if s is not None else ""): [v[x] for x in sorted(v)]
                               for (k, s), v in norms.items()}
    curves = load_curves(store_path, [i for group in ids.values() for i in group])
    return Verdict("early-decay", held, line, numbers, _sections(errors, norms, ids, curves, numbers, held))


def _err(per_seed: dict[int, float]) -> str:
    return pm(*(100 * v for v in mean_std(per_seed.values())), ".1f")


def _sections(errors, norms, ids, curves, numbers, held) -> list[Section]:
    order = sorted(errors, key=lambda m: (["none", "early", "late", "full"].index(m[0]), m[1] or 0))
    table = []
    for method in order:
        key, switch = method
        name = LABELS[key] + (f" (switch {switch:g})" if switch is not None else "")
        gain = [errors[("none", None)][s] - errors[method][s] for s in errors[method] if s in errors[("none", None)]]
        table.append({"method": name, "test error (%)": _err(errors[method]),
                      "gain over no decay (points)": pm(*(100 * v for v in mean_std(gain)), "+.1f"),
                      "final ‖w‖": pm(*mean_std(norms[method].values()), ".1f"), "seeds": len(errors[method])})
    prose = (
        f"Test error at the end of training (mean ± std over seeds) and the final weight norm. The verdict reads "
        f"early and late decay at a switch of {SWITCH:g} of the run: full decay gains "
        f"{100 * numbers['benefit_full'][0]:.1f} points over no decay; early decay recovers "
        f"{100 * numbers['recovered_early']:.0f}% of that (HELD needs ≥ {100 * MOST:.0f}% and a smaller final weight "
        f"norm than no decay in every seed), late decay {100 * numbers['recovered_late']:.0f}%. Result: "
        f"{word(held)}."
    )
    return [Section("Early and late weight decay", prose, figures=[
        ("Test error against the switch point (early: decay until it; late: decay from it); horizontal lines: no "
         "decay and full decay. Mean ± std over seeds.", _switch_figure(errors)),
        ("Weight norm and test error against the step (mean over seeds, band ±1 std); early and late decay at a "
         f"switch of {SWITCH:g}.", _curves_figure(ids, curves)),
    ], table=table)]


def _switch_figure(errors):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2, 3.4), layout="constrained")
    ax = figure.subplots()
    for k, key in enumerate(("none", "full")):
        mean, std = mean_std(errors[(key, None)].values())
        ax.axhline(100 * mean, color=f"C{k}", linestyle="--", label=LABELS[key])
        if math.isfinite(std):
            ax.axhspan(100 * (mean - std), 100 * (mean + std), color=f"C{k}", alpha=0.12)
    for k, key in enumerate(("early", "late"), start=2):
        switches = sorted(s for m, s in errors if m == key)
        stats = [mean_std(errors[(key, s)].values()) for s in switches]
        ax.errorbar(switches, [100 * m for m, _ in stats], yerr=[100 * s if math.isfinite(s) else 0 for _, s in stats],
                    color=f"C{k}", marker="o", capsize=3, label=LABELS[key])
    ax.set_xlim(0, 1)
    ax.set_xlabel("switch point (fraction of the run)")
    ax.set_ylabel("test error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return figure


def _curves_figure(ids, curves):
    series = {}
    for method, run_ids in ids.items():
        key, switch = method
        if switch not in (None, SWITCH):
            continue
        per_metric = {}
        for metric in ("weight_norm", "test_acc"):
            runs = [curves[i].get(metric, []) for i in run_ids]
            per_metric[metric] = fig.mean_curve([r for r in runs if r])
        steps, mean, std, n = per_metric.pop("test_acc")
        per_metric["test_error"] = (steps, 100 * (1 - mean), 100 * std, n)
        series[LABELS[key]] = per_metric
    ordered = {LABELS[k]: series[LABELS[k]] for k in ("none", "early", "late", "full") if LABELS[k] in series}
    return fig.curves_figure(ordered, [("weight_norm", "weight norm ‖w‖₂", False), ("test_error", "test error (%)",
                                                                                   False)],
                             "No, early, late and full weight decay")


REPRODUCTION = register(Reproduction(
    name="early-decay",
    title="Weight decay only early recovers most of its benefit; the weight norm stays small",
    claim="Weight decay during only the first part of training recovers most of full-length decay's benefit "
          "over none (late decay does not), and the weight norm stays small afterwards. Verdict: test error of "
          "none / early / late / full and the weight-norm curves.",
    source="Golatkar, Achille & Soatto, Time Matters in Regularizing Deep Networks, NeurIPS 2019; Bjorck, "
           "Weinberger & Gomes, Understanding Decoupled and Early Weight Decay, AAAI 2021",
    analyze=analyze,
    seeds=3,
))

