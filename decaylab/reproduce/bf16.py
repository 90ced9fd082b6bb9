"""``decaylab reproduce bf16``: weight decay in bfloat16 — rounding, optimizer state, and stability.

Two claims, judged separately and combined (held only if both held), and one measurement reported:

1. **Rounding** (docs/methods.md §5; pytorch PR #64475): with bf16 parameters, ``torch.optim.AdamW``
   writes ``w·(1 − lr·λ)`` in bf16, which rounds back to ``w`` when ``lr·λ`` is below half of bf16's
   relative spacing (2⁻⁹…2⁻⁸): the decay is lost. decaylab's AdamW computes in fp32 and keeps each
   write's rounding error (Kahan compensation, :mod:`decaylab.optim.precision`), so it should follow
   the fp32 trajectory. The torch arm is torch's own class (``optimizer = "torch-adamw"``). Checks, at the
   decayed λ, with ``r_t = ‖w_t^{bf16}‖ / ‖w_t^{fp32}‖`` for the same seed at every evaluation:
   decaylab's seed-mean ``|r_t − 1|`` stays within ``[claim] track_tolerance`` over the whole run; and
   the decay's effect within torch's arm, ``‖w_λ‖/‖w_0‖`` at the end (same seed), lies above fp32's
   (the decay it lost) by more than the tolerance: the 95% t-interval of the paired per-seed
   difference wholly above it (judged within the arm, because torch's other bf16 roundings — its
   moments and steps are bf16 too — move ``‖w‖`` at λ = 0 as well).
2. **Optimizer state** (issue 17, reported, not judged): the same pure-bf16 run with decaylab's AdamW
   keeping its running averages in bf16 (``optimizer_state:bf16`` callback: ``state_dtype``), with
   round-to-nearest and with stochastic rounding, beside the default fp32 state: each arm's largest
   weight-norm drift from fp32, ``max_t |r_t − 1|`` (seed mean of the per-seed maxima).
3. **Stability** ("Why WD", LLM section: bf16 runs without decay diverge; Wortsman et al. 2023,
   "Small-scale proxies for large-scale Transformer training instabilities": attention- and
   output-logit growth shows in small transformers at high learning rates): a small GPT at learning
   rates along a grid, fp32 vs bf16 autocast × λ ∈ {0, λ₁}. A run *diverged* (:func:`diverged`, fixed
   in the spec before the verdict) when its train loss is ever non-finite or ends at or above its
   first evaluation's (5% into the run): it did not recover; spikes it recovers from do not count. Per seed, each
   arm's count of diverged learning rates; the paired effects ``count(bf16, λ=0) − count(fp32, λ=0)``
   (precision) and ``count(bf16, λ=0) − count(bf16, λ₁)`` (decay) count for the claim when their 95%
   t-interval lies wholly above ``[claim] shift_threshold`` (grid steps), against it when wholly below.
   Premises: no run diverges at the grid's lowest lr, and at its top lr some arm diverges in at least
   half the seeds (the grid reaches the unstable region: else the test has no power).
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

__all__ = ["BF16", "Stability", "analyze", "diverged", "judge_stability"]

NAME = "bf16"
FP32, KAHAN, TORCH = "fp32", "bf16 decaylab AdamW", "bf16 torch AdamW"
STATE, STATE_SR = "bf16 decaylab AdamW, bf16 state", "bf16 decaylab AdamW, bf16 state (stochastic)"
GPT_FP32, GPT_BF16 = "gpt fp32", "gpt bf16 autocast"
ROUNDING_ARMS = (FP32, KAHAN, TORCH)
STATE_ARMS = (KAHAN, STATE, STATE_SR)
NO_PROGRESS = 1.0  # a final train loss at or above this multiple of the first evaluation's: diverged
CLAIM_KEYS = ("track_tolerance", "shift_threshold")


def diverged(curve: Sequence[tuple[int, float]], final: float | None) -> bool:
    """Whether a run diverged: its train loss is ever non-finite, or it ends at or above
    :data:`NO_PROGRESS` times its first evaluation's (it lost all it had learned by then). A spike it
    recovers from is not a divergence (Wortsman et al. judge a run by its final loss).

    >>> diverged([(1, 3.0), (2, 9.0), (3, 2.1)], 2.1), diverged([(1, 3.0), (2, 20.0), (3, 18.0)], 18.0)
    (False, True)
    >>> diverged([(1, 3.0), (2, math.nan), (3, 2.0)], 2.0), diverged([(1, 3.0)], math.nan)
    (True, True)
    """
    if final is None or not math.isfinite(final):
        return True
    if any(value is None or not math.isfinite(value) for _, value in curve):
        return True
    return bool(curve) and final >= NO_PROGRESS * curve[0][1]


@dataclass
class Stability:
    """What :func:`judge_stability` decides; plain data for the verdict."""

    held: bool | None
    premises: list[S.Premise]
    effects: dict[str, S.Interval] = field(default_factory=dict)
    parts: dict[str, bool | None] = field(default_factory=dict)
    counts: dict[tuple[str, float], list[int]] = field(default_factory=dict)  # per seed, seeds in order
    lowest: dict[tuple[str, float], list[float | None]] = field(default_factory=dict)  # lowest diverged lr
    seeds: int = 0


def judge_stability(div: Mapping[tuple[str, float, float, int], bool], wd: float, threshold: float) -> Stability:
    """The stability verdict from ``(arm, λ, lr, seed) -> diverged`` over a complete grid of the arms
    :data:`GPT_FP32` and :data:`GPT_BF16` at λ ∈ {0, ``wd``}; the paired effects are judged against
    ``threshold`` (grid steps)."""
    lrs = sorted({k[2] for k in div})
    seeds = sorted({k[3] for k in div})
    arms = [(GPT_FP32, 0.0), (GPT_BF16, 0.0), (GPT_BF16, wd), (GPT_FP32, wd)]
    missing = [(a, w, lr, s) for a, w in arms for lr in lrs for s in seeds if (a, w, lr, s) not in div]
    if missing:
        raise ValueError(f"the stability grid is not complete: {len(missing)} runs missing, e.g. {missing[0]}")
    counts = {(a, w): [sum(div[(a, w, lr, s)] for lr in lrs) for s in seeds] for a, w in arms}
    lowest = {(a, w): [next((lr for lr in lrs if div[(a, w, lr, s)]), None) for s in seeds] for a, w in arms}
    effects = {
        "precision": S.interval(b - f for b, f in zip(counts[(GPT_BF16, 0.0)], counts[(GPT_FP32, 0.0)], strict=True)),
        "decay": S.interval(b - d for b, d in zip(counts[(GPT_BF16, 0.0)], counts[(GPT_BF16, wd)], strict=True)),
    }
    parts = {k: S.against(v, threshold) for k, v in effects.items()}
    at_low = sum(div[(a, w, lrs[0], s)] for a, w in arms for s in seeds)
    reach = sum(any(div[(a, w, lrs[-1], s)] for a, w in arms) for s in seeds) / len(seeds)
    premises = [
        S.Premise.at_most("runs diverged at the lowest lr", at_low, 0,
                          f"of {len(arms) * len(seeds)} runs at lr {lrs[0]:g}: the grid starts where training is "
                          "stable"),
        S.Premise.at_least("seeds with a divergence at the top lr", reach, 0.5,
                           f"fraction of seeds in which some arm diverged at lr {lrs[-1]:g}: the grid reaches the "
                           "unstable region"),
    ]
    return Stability(S.combine(parts.values()), premises, effects, parts, counts, lowest, len(seeds))


def analyze(store_path: str | Path, spec: Any, scale: str) -> Verdict:
    claim = claim_numbers(spec, CLAIM_KEYS)
    tolerance = claim["track_tolerance"]
    runs = R.finished_runs(store_path, spec.name)
    cells = R.by_cell(runs, lambda r: (r.label, r.config["weight_decay"]))
    rounding_wds = sorted({wd for label, wd in cells if label in ROUNDING_ARMS})
    wd = next((w for w in rounding_wds if w > 0), None)
    gpt_wds = sorted({w for label, w in cells if label in (GPT_FP32, GPT_BF16)})
    gpt_wd = next((w for w in gpt_wds if w > 0), None)
    needed = [(arm, w) for arm in (*ROUNDING_ARMS, STATE, STATE_SR) for w in (0.0, wd)]
    needed += [(arm, w) for arm in (GPT_FP32, GPT_BF16) for w in (0.0, gpt_wd)]
    missing = (R.too_few_seeds(cells, needed) if wd is not None and gpt_wd is not None
               else "the grid needs λ = 0 and a λ > 0 in both halves")
    if missing:
        return Verdict(NAME, None, S.verdict_line(NAME, None, missing), {"cells": len(cells)})
    curves = R.curves_of(store_path, runs)

    def seeds(arm, w):
        return {r.config["seed"]: r for r in cells[(arm, w)]}

    def norm_ratios(arm, w):
        """Per evaluation step: the per-seed ratios ‖w_bf16‖/‖w_fp32‖ (seeds present in both arms)."""
        mine, ref = seeds(arm, w), seeds(FP32, w)
        out: dict[int, list[float]] = {}
        for s in sorted(set(mine) & set(ref)):
            a, b = dict(curves[mine[s].id]["weight_norm"]), dict(curves[ref[s].id]["weight_norm"])
            for step in sorted(set(a) & set(b)):
                out.setdefault(step, []).append(a[step] / b[step] if b[step] else math.inf)
        return out

    def drift(arm, w):  # per seed: max_t |‖w_t‖/‖w_t^fp32‖ − 1|
        mine, ref = seeds(arm, w), seeds(FP32, w)
        out = []
        for s in sorted(set(mine) & set(ref)):
            a, b = dict(curves[mine[s].id]["weight_norm"]), dict(curves[ref[s].id]["weight_norm"])
            out.append(max(abs(a[t] / b[t] - 1.0) if b[t] else math.inf for t in set(a) & set(b)))
        return S.Stat.of(out)

    # 1. rounding
    kahan = norm_ratios(KAHAN, wd)
    kahan_dev = max(abs(sum(v) / len(v) - 1.0) for v in kahan.values())
    tracks = kahan_dev <= tolerance
    torch_ratio = norm_ratios(TORCH, wd)
    torch_final = S.Stat.of(torch_ratio[max(torch_ratio)])
    kahan_final = S.Stat.of(kahan[max(kahan)])
    noise_dev = {arm: max(abs(sum(v) / len(v) - 1.0) for v in norm_ratios(arm, 0.0).values()) for arm in (KAHAN, TORCH)}

    def decay_effect(arm):  # ‖w_λ‖/‖w_0‖ at the end, per seed: what the decay did within one arm
        on, off = seeds(arm, wd), seeds(arm, 0.0)
        return {s: on[s].final["weight_norm"] / off[s].final["weight_norm"] for s in sorted(set(on) & set(off))}

    per_seed = {arm: decay_effect(arm) for arm in ROUNDING_ARMS}
    effect = {arm: S.Stat.of(v.values()) for arm, v in per_seed.items()}
    # the decay torch's AdamW loses, paired per seed: its ‖w_λ‖/‖w_0‖ above fp32's by more than the tolerance
    lost = S.interval(per_seed[TORCH][s] - per_seed[FP32][s] for s in per_seed[TORCH] if s in per_seed[FP32])
    deviates = S.against(lost, tolerance)
    rounding = S.combine([tracks, deviates])

    # 2. optimizer state (reported)
    drifts = {f"{arm} λ={w:g}": drift(arm, w) for arm in STATE_ARMS for w in (0.0, wd)}

    # 3. stability
    div = {}
    for arm in (GPT_FP32, GPT_BF16):
        for w in (0.0, gpt_wd):
            for r in cells[(arm, w)]:
                div[(arm, w, r.config["lr"], r.config["seed"])] = diverged(curves[r.id].get("train_loss", []),
                                                                           r.final.get("train_loss"))
    try:
        st = judge_stability(div, gpt_wd, claim["shift_threshold"])
    except ValueError as error:
        return Verdict(NAME, None, S.verdict_line(NAME, None, str(error)), {"cells": len(cells)})
    held = S.combine([rounding, st.held])
    lrs = sorted({k[2] for k in div})

    def counts_text(key):
        return f"{S.Stat.of(st.counts[key]).text('.1f')}"

    rounding_text = (f"rounding [{S.word(rounding)}]: at λ={wd:g}, decay's effect ‖w_λ‖/‖w_0‖: fp32 "
                     f"{effect[FP32].text('.3f')}, torch AdamW bf16 {effect[TORCH].text('.3f')} [{S.word(deviates)}: "
                     f"its decay rounds away], decaylab bf16 {effect[KAHAN].text('.3f')}, max trajectory deviation "
                     f"{kahan_dev:.2%} (tolerance {tolerance:.0%}) [{S.word(tracks)}]")
    state_text = ("bf16 optimizer state, max ‖w‖ drift from fp32 at λ=" + f"{wd:g}: " + ", ".join(
        f"{label} {drifts[f'{arm} λ={wd:g}'].mean:.2%}"
        for arm, label in ((KAHAN, "fp32 state"), (STATE, "bf16 nearest"), (STATE_SR, "bf16 stochastic"))))
    stability_text = (f"stability [{S.word(st.held)}]: diverged lrs of {len(lrs)} ({lrs[0]:g}–{lrs[-1]:g}) per seed, "
                      f"fp32 λ=0 {counts_text((GPT_FP32, 0.0))}, bf16 λ=0 {counts_text((GPT_BF16, 0.0))}, "
                      f"bf16 λ={gpt_wd:g} {counts_text((GPT_BF16, gpt_wd))}, fp32 λ={gpt_wd:g} "
                      f"{counts_text((GPT_FP32, gpt_wd))}; bf16 λ=0 minus fp32 λ=0 "
                      f"{st.effects['precision'].text('+.2f')} [{S.word(st.parts['precision'])}], minus bf16 "
                      f"λ={gpt_wd:g} {st.effects['decay'].text('+.2f')} [{S.word(st.parts['decay'])}], threshold "
                      f"{claim['shift_threshold']:g} grid steps")
    n = min(len(v) for v in cells.values())
    if any(not p.held for p in st.premises):
        line = f"{NAME}: {S.PREMISE_NOT_MET} — {S.premises_line(st.premises)} ({rounding_text}; {n} seeds)"
    else:
        line = S.verdict_line(NAME, held, f"{rounding_text}. {state_text}. {stability_text}; {n} seeds")
    loss = {key: S.Stat.of(r.final.get("test_loss") for r in group) for key, group in cells.items()}
    numbers = {
        "weight_decay": wd, "rounding": S.word(rounding), "stability": S.word(st.held), "claim": claim,
        "kahan_max_trajectory_deviation": kahan_dev, "kahan_tracks_fp32": S.word(tracks),
        "torch_final_norm_ratio": torch_final.plain(), "kahan_final_norm_ratio": kahan_final.plain(),
        "torch_deviates": S.word(deviates), "torch_lost_decay_paired": lost.plain(),
        "bf16_noise_at_lambda0_max_deviation": noise_dev,
        "decay_effect_norm_ratio": {arm: s.plain() for arm, s in effect.items()},
        "state_max_norm_drift": {k: v.plain() for k, v in drifts.items()},
        "stability_weight_decay": gpt_wd, "stability_lrs": lrs,
        "diverged_counts": {f"{a} λ={w:g}": c for (a, w), c in st.counts.items()},
        "lowest_diverged_lr": {f"{a} λ={w:g}": c for (a, w), c in st.lowest.items()},
        "stability_effects": {k: v.plain() for k, v in st.effects.items()},
        "stability_parts": {k: S.word(v) for k, v in st.parts.items()}, "seeds": n,
    }
    table = [{"arm": arm, "λ": f"{w:g}",
              "final ‖w‖": S.Stat.of(r.final["weight_norm"] for r in cells[(arm, w)]).text(".3f"),
              "‖w‖ / fp32's at the end": S.Stat.of(norm_ratios(arm, w)[max(norm_ratios(arm, w))]).text(".4f"),
              "max |‖w‖/fp32's − 1|": drift(arm, w).text(".4f"),
              "final test loss": loss[(arm, w)].text(".4f")}
             for arm in (*ROUNDING_ARMS, STATE, STATE_SR) for w in (0.0, wd)]
    def diverged_at(a, w, lr):
        hits = [v for k, v in div.items() if k[:3] == (a, w, lr)]
        return f"{sum(hits)}/{len(hits)}"

    stab_table = [{"arm": a, "λ": f"{w:g}", **{f"lr {lr:g}": diverged_at(a, w, lr) for lr in lrs}}
                  for a, w in [(GPT_FP32, 0.0), (GPT_BF16, 0.0), (GPT_FP32, gpt_wd), (GPT_BF16, gpt_wd)]]
    prose = (f"Weight-norm ratios are per seed (the same initial weights and data order in every arm), mean ± "
             f"sample std over seeds. The λ = 0 rows show what bf16 alone does to ‖w‖ (max seed-mean trajectory "
             f"deviation from fp32: decaylab {noise_dev[KAHAN]:.2%}, torch {noise_dev[TORCH]:.2%}). The bf16-state "
             f"arms keep decaylab AdamW's running averages in bf16 (optimizer_state callback), rounded to nearest "
             f"or stochastically; the default keeps them in fp32. {state_text}.")
    stab_prose = ("Diverged runs out of the seeds at each lr (a run diverged when its train loss is ever "
                  f"non-finite, or ends at or above {NO_PROGRESS:g}× its first evaluation's loss). The effects are "
                  "per-seed differences of the counts of diverged lrs, with the 95% t-interval of their mean. "
                  f"{stability_text}.\n\nPremises: " + "; ".join(f"{p.text()} ({p.detail})" for p in st.premises)
                  + ".")
    sections = [Section("bf16: decay rounding and the optimizer state's precision", prose=prose, table=table,
                        figures=[("‖w‖ through the run (seed means), and its ratio to fp32's",
                                  _figure(cells, curves, wd))]),
                Section("bf16: divergences along the learning rate (a small GPT)", prose=stab_prose, table=stab_table)]
    return Verdict(NAME, held, line, numbers, sections, premises=st.premises, seeds=n)


def _figure(cells, curves, wd):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2))
    axes = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for arm in (*ROUNDING_ARMS, STATE, STATE_SR):
        for w in (0.0, wd):
            group = cells[(arm, w)]
            series = [curves[r.id].get("weight_norm", []) for r in group]
            length = min(len(s) for s in series)
            if not length:
                continue
            xs = [s for s, _ in series[0][:length]]
            ys = [sum(c[i][1] for c in series) / len(series) for i in range(length)]
            axes[0].plot(xs, ys, "-" if w else ":", label=f"{arm}, λ={w:g}")
            ref = [curves[r.id].get("weight_norm", []) for r in cells[(FP32, w)]]
            if len(ref) == len(series) and min(len(s) for s in ref) >= length:
                ratio = [sum(c[i][1] / q[i][1] for c, q in zip(series, ref, strict=True)) / len(series)
                         for i in range(length)]
                axes[1].plot(xs, ratio, "-" if w else ":", label=f"{arm}, λ={w:g}")
    axes[0].set_ylabel("‖w‖")
    axes[1].set_ylabel("‖w‖ / fp32's")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    return fig


BF16 = register(Reproduction(
    name=NAME,
    title="bf16: decay that rounds away, bf16 optimizer state, and divergence without decay",
    claim=("in pure bf16, torch's AdamW loses the decay to rounding while decaylab's compensated update keeps the "
           "fp32 trajectory; a small GPT in bf16 autocast without decay diverges at more learning rates than in "
           "fp32 or with decay"),
    source="pytorch PR #64475 (decay below the dtype's resolution); optimi's Kahan-compensated updates; D'Angelo, "
           "Andriushchenko et al., 'Why do we need weight decay in modern deep learning?', NeurIPS 2024, LLM section "
           "(bfloat16 divergences); Wortsman et al., 'Small-scale proxies for large-scale Transformer training "
           "instabilities', ICLR 2024",
    analyze=analyze,
))
