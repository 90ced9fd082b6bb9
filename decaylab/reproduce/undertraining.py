r"""``decaylab reproduce undertraining``: "Why WD", LLM — weight decay in one-pass training.

D'Angelo, Andriushchenko, Varre, Flammarion, "Why do we need weight decay in modern deep learning?"
(NeurIPS 2024, arXiv 2310.04415), LLM section: with AdamW and a cosine schedule, weight decay makes the
loss *higher* mid-training and *lower* at the end; train and validation loss move together (one pass:
decay does not act against over-fitting); what decay changes is the effective learning rate.

**Setup.** A small GPT (``gpt-nano``: LayerNorm, 2 layers) trains for thousands of steps on the
byte-level stdlib corpus in *under one pass* (the windows drawn sum to less than the training split),
AdamW (β = (0.9, 0.95), clip 1.0) with warmup and cosine to 0.1·lr, at λ = 0 and at λ with
``lr·λ·T`` = 3 (the paper's λ = 0.1 at lr 6e-4 over 50k steps), beside a constant-lr λ = 0 run that
measures the regime.

**Statistic** (fixed in the spec's ``[claim]`` before running). Per seed (the same initial weights,
data order and evaluation windows in every arm), at the judged λ (``[claim] judged_lr_lambda_T``):

* ``mid = L_val(λ, T/2) − L_val(0, T/2)``: the claim says > 0 (higher mid-training);
* ``end = L_val(0, T) − L_val(λ, T)``: the claim says > 0 (lower at the end);
* ``narrowing = gap(0) − gap(λ)`` with ``gap = L_val − L_train`` at the end: how much decay closed the
  generalization gap; the claim (decay acts on the optimization, not on over-fitting) says ≈ 0 or less.

``mid`` and ``end`` count for the claim when the 95% t-interval of their seed mean lies wholly above
``[claim] mid_threshold`` / ``end_threshold``, against it when wholly below; ``narrowing`` counts for it
when its interval lies wholly below ``[claim] gap_threshold``, against when wholly above
(:func:`~decaylab.reproduce.stats.against`). HELD when all three count for it, DID NOT HOLD when any
counts against; undecided, seeds are added up to ``max_seeds``. Any other λ > 0 of the grid (the
paper scale's λ = 0.3) is reported beside it, not judged.

**Premises** (PREMISE NOT MET, with which): the constant-lr λ = 0 run has *plateaued* before mid-run —
its validation loss falls over the second half by at most ``[claim] plateau_ratio`` of what it fell
over the first half (from the first evaluation), seed mean — the noise-floor regime in which the
cosine decay of the lr "cashes in" and in which the claim is made; the run is under one pass over the
training split (``steps·batch·block ≤ bytes``); the judged λ's integrated decay ``∫ lr_t·λ dt`` is at
least ``[claim] min_efolds`` e-folds.

The paper's effective-lr control (λ = 0 with the decayed run's ``lr/‖w‖`` through ``lr_factors``) needs
a second stage of runs; it does not fit this reproduction's 2-core budget and is not run here. The
report shows ``lr/‖w‖`` (the ``effective_lr`` curve) of every arm instead.
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
from .core import Reproduction, Verdict, claim_numbers, register

__all__ = ["UNDERTRAINING", "Judgement", "analyze", "judge", "plateau_ratio"]

NAME = "undertraining"
METHOD = "AdamW"  # the cosine runs, λ on the grid
CONSTANT = "constant lr"  # the regime's probe: λ = 0 at the constant peak lr
CLAIM_KEYS = ("judged_lr_lambda_T", "mid_threshold", "end_threshold", "gap_threshold", "plateau_ratio",
              "min_efolds")


def plateau_ratio(first: float, mid: float, end: float) -> float:
    """How much a loss curve still falls over its second half, as a fraction of what it fell over the
    first: ``(L_mid − L_end) / (L_first − L_mid)`` (``inf`` when it did not fall in the first half).

    >>> plateau_ratio(3.0, 2.0, 1.5)
    0.5
    """
    drop = first - mid
    return (mid - end) / drop if drop > 0 else math.inf


@dataclass
class Judgement:
    """What :func:`judge` decides from per-seed numbers; plain data for the verdict."""

    held: bool | None
    premises: list[S.Premise]
    effects: dict[str, S.Interval] = field(default_factory=dict)
    parts: dict[str, bool | None] = field(default_factory=dict)
    seeds: int = 0


def judge(per_seed: Mapping[int, Mapping[str, float]], claim: Mapping[str, float], *,
          passes: float, efolds: float) -> Judgement:
    """The verdict from per-seed numbers ``seed -> {"mid0", "mid", "end0", "end", "gap0", "gap",
    "const_first", "const_mid", "const_end"}`` (validation losses at mid-run and at the end of the λ = 0
    and the judged λ run, their val − train gaps at the end, and the constant-lr λ = 0 run's validation
    loss at its first evaluation, mid-run and end), the spec's ``claim`` thresholds, the passes over
    the training split and the judged λ's integrated decay in e-folds."""
    seeds = sorted(per_seed)
    rows = [per_seed[s] for s in seeds]
    ratio = S.mean_std(plateau_ratio(r["const_first"], r["const_mid"], r["const_end"]) for r in rows)[0]
    premises = [
        S.Premise.at_most("constant-lr loss still falling after mid-run", ratio, claim["plateau_ratio"],
                          "seed mean of (L(T/2) − L(T)) / (L(first evaluation) − L(T/2)) of the constant-lr "
                          "λ = 0 run's validation loss: how much of its first-half fall it still makes in the "
                          "second half"),
        S.Premise.at_most("passes over the training split", passes, 1.0,
                          "bytes drawn (steps × batch × block) over the training split's bytes"),
        S.Premise.at_least("integrated decay of the judged λ (e-folds)", efolds, claim["min_efolds"],
                           "∫ lr_t·λ dt over the cosine run"),
    ]
    effects = {
        "mid": S.interval(r["mid"] - r["mid0"] for r in rows),
        "end": S.interval(r["end0"] - r["end"] for r in rows),
        "narrowing": S.interval(r["gap0"] - r["gap"] for r in rows),
    }
    parts = {
        "mid": S.against(effects["mid"], claim["mid_threshold"]),
        "end": S.against(effects["end"], claim["end_threshold"]),
        "narrowing": _below(effects["narrowing"], claim["gap_threshold"]),
    }
    return Judgement(S.combine(parts.values()), premises, effects, parts, len(seeds))


def _below(effect: S.Interval, threshold: float) -> bool | None:
    """True when the whole interval lies below ``threshold``, False when wholly above, else None."""
    flipped = S.Interval(-effect.mean, effect.half, effect.n, effect.std)
    return S.against(flipped, -threshold)


def analyze(store_path: str | Path, spec: Any, scale: str) -> Verdict:
    claim = claim_numbers(spec, CLAIM_KEYS)
    runs = R.finished_runs(store_path, spec.name)
    cells = R.by_cell(runs, lambda r: (r.label, r.config["weight_decay"]))
    wds = sorted(wd for label, wd in cells if label == METHOD)
    if not runs or 0.0 not in wds or (CONSTANT, 0.0) not in cells or len(wds) < 2:
        return Verdict(NAME, None, S.verdict_line(NAME, None, "the spec needs AdamW at λ = 0 and λ > 0 and the "
                                                              "constant-lr λ = 0 run, finished"), {"runs": len(runs)})
    config = cells[(METHOD, 0.0)][0].config  # a cosine run (the constant-lr probe has another schedule)
    steps, lr = int(config["steps"]), float(config["lr"])
    doses = {wd: wd * lr * steps for wd in wds}
    judged = min(wds, key=lambda wd: abs(doses[wd] - claim["judged_lr_lambda_T"]))
    missing = R.too_few_seeds(cells, [(METHOD, 0.0), (METHOD, judged), (CONSTANT, 0.0)])
    if missing:
        return Verdict(NAME, None, S.verdict_line(NAME, None, missing), {"runs": len(runs)})
    curves = R.curves_of(store_path, runs)
    mid = steps // 2

    def by_seed(key):
        return {r.config["seed"]: r for r in cells[key]}

    def at(run, metric, step):
        return R.at_step(curves[run.id][metric], step)

    def gap(run):
        return at(run, "val_loss", steps) - at(run, "train_loss", steps)

    const = by_seed((CONSTANT, 0.0))
    base = by_seed((METHOD, 0.0))

    def numbers_for(wd):
        dec = by_seed((METHOD, wd))
        out = {}
        for s in sorted(set(base) & set(dec) & set(const)):
            first = curves[const[s].id]["val_loss"][0][0]
            out[s] = {"mid0": at(base[s], "val_loss", mid), "mid": at(dec[s], "val_loss", mid),
                      "end0": at(base[s], "val_loss", steps), "end": at(dec[s], "val_loss", steps),
                      "gap0": gap(base[s]), "gap": gap(dec[s]),
                      "const_first": at(const[s], "val_loss", first), "const_mid": at(const[s], "val_loss", mid),
                      "const_end": at(const[s], "val_loss", steps)}
        return out

    from decaylab.data import load

    data = load(config["dataset"])
    passes = steps * config["batch_size"] * config["block_size"] / len(data.split("train"))
    efolds = {wd: R.integrated_decay({**config, "weight_decay": wd}) for wd in wds}
    j = judge(numbers_for(judged), claim, passes=passes, efolds=efolds[judged])
    others = {wd: judge(numbers_for(wd), claim, passes=passes, efolds=efolds[wd])
              for wd in wds if wd not in (0.0, judged)}

    def effect_text(jj):
        return (f"mid-run (step {mid}) higher by {jj.effects['mid'].text('+.3f')} [{S.word(jj.parts['mid'])}], "
                f"end (step {steps}) lower by {jj.effects['end'].text('+.3f')} [{S.word(jj.parts['end'])}], "
                f"val−train gap narrowed by {jj.effects['narrowing'].text('+.3f')} "
                f"[{S.word(jj.parts['narrowing'])}]")

    setting = (f"gpt on {config['dataset']}, {steps} steps, lr {lr:g}, λ={judged:g} (lr·λ·T = {doses[judged]:g}, "
               f"{efolds[judged]:.2f} e-folds) vs λ=0, {j.seeds} seeds")
    thresholds = (f"thresholds: mid > {claim['mid_threshold']:g}, end > {claim['end_threshold']:g}, "
                  f"narrowing < {claim['gap_threshold']:g} nats")
    if any(not p.held for p in j.premises):
        line = f"{NAME}: {S.PREMISE_NOT_MET} — {S.premises_line(j.premises)} ({setting})"
    else:
        line = S.verdict_line(NAME, j.held, f"{effect_text(j)}; {thresholds} ({setting})")
    numbers = {
        "judged_weight_decay": judged, "lr_lambda_T": {f"{wd:g}": doses[wd] for wd in wds},
        "integrated_decay_efolds": {f"{wd:g}": efolds[wd] for wd in wds}, "passes": passes,
        "mid_step": mid, "end_step": steps, "claim": claim,
        "effects": {k: v.plain() for k, v in j.effects.items()}, "parts": {k: S.word(v) for k, v in j.parts.items()},
        "other_lambdas": {f"{wd:g}": {"effects": {k: v.plain() for k, v in o.effects.items()},
                                      "parts": {k: S.word(v) for k, v in o.parts.items()}} for wd, o in others.items()},
        "seeds": j.seeds,
    }
    keys = [(METHOD, wd) for wd in wds] + [(CONSTANT, 0.0)]

    def stat(key, metric, step):
        return S.Stat.of(at(r, metric, step) for r in cells[key])

    table = [{"run": f"{k[0]} λ={k[1]:g}" + (f" (lr·λ·T = {doses[k[1]]:g})" if k[0] == METHOD else ""),
              f"val loss @ {mid}": stat(k, "val_loss", mid).text(".3f"),
              f"val loss @ {steps}": stat(k, "val_loss", steps).text(".3f"),
              "val − train @ end": S.Stat.of(gap(r) for r in cells[k]).text("+.3f"),
              f"lr/‖w‖ @ {mid}": stat(k, "effective_lr", mid).text(".2e"),
              "‖w‖ @ end": stat(k, "weight_norm", steps).text(".1f")} for k in keys]
    prose = ("Validation loss in nats per byte, mean ± sample std over seeds. The effects are paired per seed "
             "(the same initial weights, data order and evaluation windows in every arm), with the 95% t-interval "
             f"of their mean; {thresholds}, fixed in the spec. "
             + "; ".join(f"λ={wd:g} (lr·λ·T = {doses[wd]:g}, not judged): {effect_text(o)}" for wd, o in others.items())
             + ".\n\nPremises: " + "; ".join(f"{p.text()} ({p.detail})" for p in j.premises) + ".")
    sections = [Section("Under-training: loss through the run, the gap, lr/‖w‖", prose=prose, table=table,
                        figures=[("Validation loss and lr/‖w‖ through the run (seed means)",
                                  _figure(cells, keys, curves))])]
    return Verdict(NAME, j.held, line, numbers, sections, premises=j.premises, seeds=j.seeds)


def _figure(cells, keys, curves):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2))
    axes = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for key in keys:
        label = f"{key[0]} λ={key[1]:g}"
        for ax, metric in zip(axes, ("val_loss", "effective_lr"), strict=True):
            series = [curves[r.id][metric] for r in cells[key]]
            length = min(len(s) for s in series)
            xs = [s for s, _ in series[0][:length]]
            ax.plot(xs, [sum(c[i][1] for c in series) / len(series) for i in range(length)], marker=".", label=label)
            ax.set_xlabel("step")
            ax.set_ylabel(metric.replace("_", " "))
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


UNDERTRAINING = register(Reproduction(
    name=NAME,
    title="Why WD (LLM): weight decay in one-pass training",
    claim=("with AdamW and a cosine schedule, decay makes the validation loss higher mid-training and lower at the "
           "end, without narrowing the train–val gap (one pass: it acts on the optimization, not on over-fitting)"),
    source="D'Angelo, Andriushchenko, Varre, Flammarion, 'Why do we need weight decay in modern deep learning?', "
           "NeurIPS 2024 (arXiv 2310.04415), LLM section (code: tml-epfl/why-weight-decay)",
    analyze=analyze,
))
