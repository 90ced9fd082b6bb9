"""``decaylab reproduce overtraining``: "Why WD", vision — weight decay with a large learning rate.

D'Angelo, Andriushchenko, Varre, Flammarion, "Why do we need weight decay in modern deep
learning?" (NeurIPS 2024, arXiv 2310.04415; code tml-epfl/why-weight-decay). In the over-training regime — every run
reaches ~100% train accuracy — plain SGD with weight decay and a *large* learning rate reaches
the lowest test error; the Jacobian norm ``‖J‖_F`` (mean over inputs of ``‖∂logits/∂θ‖_F``) falls
monotonically as ``η·λ`` grows, while the test error is best at an intermediate ``η·λ``: decay
keeps SGD's noise from vanishing, and that noise regularizes ``‖J‖_F``.

The verdict checks, over >= 3 seeds (:mod:`decaylab.reproduce._regimes` decides each comparison
against the seeds' spread):

1. premise: the four lr × λ∈{0, λ*} cells reach >= 99% train accuracy (else inconclusive);
2. the cell (large lr, λ*) has a lower test error than each of the other three;
3. in the large-lr arm, the seed-mean ``‖J‖_F`` falls at every step up the λ grid, and the
   whole fall beats the spread (a step that rises beyond its spread fails the check);
4. in the large-lr arm, the λ with the lowest validation error (selection) is interior, and its test
   error is below both ends of the grid (judgement).

Validation selects (the best λ, the "best other" corner named in the line); test judges. A store from
before runs recorded validation selects on test, as it always did.

The weight EMA's effect (``ema_test_acc − test_acc`` per cell) is reported, not judged.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..report.build import Section
from . import _regimes as R
from . import stats as S
from .core import Reproduction, Verdict, register
from .stats import verdict_line

NAME = "overtraining"
SMALL, LARGE = "small lr", "large lr"
TRAIN_ACC_PREMISE = 0.99


def analyze(store_path: str | Path, spec: Any, scale: str) -> Verdict:
    runs = R.finished_runs(store_path, spec.name)
    cells = R.by_cell(runs, lambda r: (r.label, r.config["weight_decay"]))
    large_wds = sorted(wd for label, wd in cells if label == LARGE)
    wd_star = max((wd for label, wd in cells if label == SMALL), default=math.nan)
    corners = [(SMALL, 0.0), (SMALL, wd_star), (LARGE, 0.0), (LARGE, wd_star)]
    missing = R.too_few_seeds(cells, corners + [(LARGE, wd) for wd in large_wds])
    if missing or len(large_wds) < 3:
        why = missing or f"the large-lr arm needs at least 3 λ values; it has {large_wds}"
        return Verdict(NAME, None, verdict_line(NAME, None, why), {"cells": len(cells)})

    err = {k: S.Stat.of(1.0 - r.final["test_acc"] for r in v) for k, v in cells.items()}
    select = "val_acc" if all("val_acc" in r.final for r in runs) else "test_acc"
    sel_err = {k: S.Stat.of(1.0 - r.final[select] for r in v) for k, v in cells.items()}
    train_acc = {k: min(r.final["train_acc"] for r in cells[k]) for k in corners}
    jac = {wd: S.Stat.of(r.final["jacobian_norm"] for r in cells[(LARGE, wd)]) for wd in large_wds}
    ema_gain = {k: S.Stat.of(r.final["ema_test_acc"] - r.final["test_acc"] for r in v)
                for k, v in cells.items() if all("ema_test_acc" in r.final for r in v)}
    lr_large = cells[(LARGE, large_wds[0])][0].config["lr"]

    # 1. premise
    premise = min(train_acc.values()) >= TRAIN_ACC_PREMISE
    # 2. large lr + WD beats the other three corners
    best = err[(LARGE, wd_star)]
    beats = {k: S.decide(err[k].mean - best.mean, S.spread(err[k], best)) for k in corners[:3]}
    lowest = S.combine(beats.values())
    # 3. ‖J‖ falls: seed means decrease at every step up the λ grid and the whole fall beats the
    #    spread; a step that rises beyond its spread is a failure
    pairs = list(zip(large_wds[:-1], large_wds[1:], strict=True))
    if any(S.decide(jac[b].mean - jac[a].mean, S.spread(jac[a], jac[b])) for a, b in pairs):
        monotone = False
    elif all(jac[a].mean > jac[b].mean for a, b in pairs):
        first, last = jac[large_wds[0]], jac[large_wds[-1]]
        monotone = S.decide(first.mean - last.mean, S.spread(first, last))
    else:
        monotone = None
    # 4. interior optimum over λ: selected on validation, judged on test
    arm = [err[(LARGE, wd)] for wd in large_wds]
    i_best = min(range(len(arm)), key=lambda i: sel_err[(LARGE, large_wds[i])].mean)
    if i_best in (0, len(arm) - 1):
        interior = False
    else:
        interior = S.combine([S.decide(arm[0].mean - arm[i_best].mean, S.spread(arm[0], arm[i_best])),
                              S.decide(arm[-1].mean - arm[i_best].mean, S.spread(arm[-1], arm[i_best]))])
    held = S.combine([lowest, monotone, interior]) if premise else None

    n = min(len(v) for v in cells.values())
    ema_text = _pct(ema_gain[(LARGE, wd_star)]) if (LARGE, wd_star) in ema_gain else "n/a"
    others = min(corners[:3], key=lambda k: sel_err[k].mean)
    line = verdict_line(NAME, held, (
        f"test error large lr+WD {_pct(best)} vs best other "
        f"({others[0]}, λ={others[1]:g}) {_pct(err[others])} [{S.word(lowest)}]; ‖J‖_F over η·λ "
        f"{lr_large * large_wds[0]:.1e}→{lr_large * large_wds[-1]:.1e}: "
        f"{' → '.join(f'{jac[wd].mean:.1f}' for wd in large_wds)} [monotone: {S.word(monotone)}]; "
        f"lowest {'validation' if select == 'val_acc' else 'test'} error at η·λ={lr_large * large_wds[i_best]:.1e} "
        f"[interior: {S.word(interior)}]; "
        f"min train acc {min(train_acc.values()):.2%}{'' if premise else ' (premise of ~100% NOT met)'}; "
        f"EMA − final test acc at large lr+WD {ema_text} (not judged); {n} seeds"
    ))
    numbers = {
        "premise_min_train_acc": min(train_acc.values()),
        "lowest_test_error": S.word(lowest), "jacobian_monotone": S.word(monotone),
        "interior_optimum": S.word(interior), "selection": select,
        "test_error": {f"{k[0]} λ={k[1]:g}": v.plain() for k, v in err.items()},
        "jacobian_norm": {f"λ={wd:g}": jac[wd].plain() for wd in large_wds},
        "ema_gain_test_acc": {f"{k[0]} λ={k[1]:g}": v.plain() for k, v in ema_gain.items()},
        "seeds": n,
    }
    table = [{"cell": f"{label}, λ={wd:g}", "η·λ": f"{cells[(label, wd)][0].config['lr'] * wd:.1e}",
              "train acc (min)": f"{min(r.final['train_acc'] for r in cells[(label, wd)]):.2%}",
              "test error": _pct(err[(label, wd)]),
              "‖J‖_F": S.Stat.of(r.final.get("jacobian_norm", math.nan) for r in cells[(label, wd)]).text(".1f"),
              "EMA − final test acc": _pct(ema_gain[(label, wd)]) if (label, wd) in ema_gain else "–",
              "‖w‖": S.Stat.of(r.final["weight_norm"] for r in cells[(label, wd)]).text(".2f")}
             for label, wd in sorted(cells)]
    prose = (
        "Plain SGD (momentum 0), constant lr for half the run then ×0.1; every cell over "
        f"{n} seeds (mean ± sample std). A comparison counts when the difference of means exceeds "
        "2·sqrt(s₁²/n₁ + s₂²/n₂). ‖J‖_F is the mean over test inputs of the Frobenius norm of the "
        "Jacobian of the logits w.r.t. all parameters (decaylab.diagnostics.jacobian_norm). "
        "The EMA column is the test accuracy of the weight average (β from the spec) minus that of the final weights."
    )
    sections = [Section("Over-training: lr × λ, Jacobian norm and EMA", prose=prose, table=table,
                        figures=[("Large-lr arm: test error and ‖J‖_F against η·λ (mean ± std over seeds)",
                                  _figure(large_wds, lr_large, arm, [jac[wd] for wd in large_wds]))])]
    return Verdict(NAME, held, line, numbers, sections)


def _pct(s: S.Stat) -> str:
    return f"{100 * s.mean:.2f} ± {100 * s.std:.2f}%" if math.isfinite(s.mean) else s.text()


def _figure(wds, lr, errors, jacs):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2))
    x = list(range(len(wds)))
    labels = [f"{lr * wd:.0e}" if wd else "0" for wd in wds]
    for ax, stats, what in ((fig.add_subplot(1, 2, 1), [100 * s.mean for s in errors], "test error (%)"),
                            (fig.add_subplot(1, 2, 2), [s.mean for s in jacs], "‖J‖_F")):
        scale = 100 if what.startswith("test") else 1
        ax.errorbar(x, stats, yerr=[scale * s.std for s in (errors if scale == 100 else jacs)], marker="o", capsize=3)
        ax.set_xticks(x, labels)
        ax.set_xlabel("η·λ (large lr)")
        ax.set_ylabel(what)
    fig.tight_layout()
    return fig


OVERTRAINING = register(Reproduction(
    name=NAME,
    title="Why WD (vision): weight decay with a large lr in the over-training regime",
    claim=("with every run at ~100% train accuracy, SGD with WD and a large lr gives the lowest test error; "
           "‖J‖_F falls as η·λ grows while the test error is best at an intermediate η·λ"),
    source="D'Angelo, Andriushchenko, Varre, Flammarion, 'Why do we need weight decay in modern deep learning?', "
           "NeurIPS 2024 (arXiv 2310.04415), vision section (code: tml-epfl/why-weight-decay)",
    analyze=analyze,
))
