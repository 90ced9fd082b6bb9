"""``decaylab reproduce bf16``: weight decay in bfloat16 — rounding, and stability at λ = 0.

Two claims, judged separately and combined (held only if both held):

1. **Rounding** (docs/methods.md §5; pytorch PR #64475): with bf16 parameters, ``torch.optim.AdamW``
   writes ``w·(1 − lr·λ)`` in bf16, which rounds back to ``w`` when ``lr·λ`` is below half of bf16's
   relative spacing (2⁻⁹…2⁻⁸): the decay is lost. decaylab's AdamW computes in fp32 and keeps each
   write's rounding error (Kahan compensation, :mod:`decaylab.optim.precision`), so it should follow
   the fp32 trajectory. The torch arm is torch's own class (``optimizer = "torch-adamw"`` in the
   engine), not an imitation, so the verdict is about the optimizer people use. Checks, at the
   decayed λ, with ``r_t = ‖w_t^{bf16}‖ / ‖w_t^{fp32}‖`` for the same seed at every evaluation:
   decaylab's seed-mean ``|r_t − 1|`` stays within 1% over the whole run ("within ~1% of the fp32
   trajectory", docs/methods.md §5); and the decay's effect within torch's arm, ``‖w_λ‖/‖w_0‖`` at the
   end (same seed), differs from fp32's by more than 1% beyond the seeds' spread (torch's other
   bf16 roundings — its moments and steps are bf16 too — move ``‖w‖`` at λ = 0 as well, so the
   decay is judged within the arm; the report shows both).
2. **Stability** ("Why WD", LLM section: their nanoGPT ``dtype=bfloat16`` runs, i.e. autocast): bf16
   with λ = 0 diverges, fp32 with λ = 0 and bf16 with λ > 0 do not. A run is *unstable* when its
   final train loss is not finite, or its train-loss curve rises more than :data:`SPIKE` nats above
   its running minimum. Held when the bf16-autocast λ = 0 arm is unstable in most seeds and the two
   controls in none; not held when that arm is stable (at small scale, expected: an MLP for 930
   steps is not an LLM at 50k steps).
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

NAME = "bf16"
FP32, KAHAN, TORCH, AUTOCAST = "fp32", "bf16 decaylab AdamW", "bf16 torch AdamW", "bf16 autocast"
TRACK_TOLERANCE = 0.01  # docs/methods.md §5: compensated pure-bf16 decay within ~1% of the fp32 trajectory
SPIKE = 0.5  # nats above the running minimum of the train loss that count as a divergence


def unstable(curve: list[tuple[int, float]], final: float) -> bool:
    """Whether a train-loss curve diverged: a non-finite final loss, or a rise of more than
    :data:`SPIKE` above the running minimum."""
    if not math.isfinite(final):
        return True
    low = math.inf
    for _, value in curve:
        if not math.isfinite(value) or value > low + SPIKE:
            return True
        low = min(low, value)
    return False


def analyze(store_path: str | Path, spec: Any, scale: str) -> Verdict:
    runs = R.finished_runs(store_path, spec.name)
    cells = R.by_cell(runs, lambda r: (r.label, r.config["weight_decay"]))
    wds = sorted({wd for _, wd in cells})
    wd = next((w for w in wds if w > 0), None)
    needed = [(arm, w) for arm in (FP32, KAHAN, TORCH, AUTOCAST) for w in (0.0, wd)]
    missing = R.too_few_seeds(cells, needed) if wd is not None else "the grid needs λ = 0 and a λ > 0"
    if missing:
        return Verdict(NAME, None, verdict_line(NAME, None, missing), {"cells": len(cells)})
    curves = R.curves_of(store_path, runs)

    def seeds(arm, w):
        return {r.config["seed"]: r for r in cells[(arm, w)]}

    def norm_ratios(arm, w):
        """Per evaluation step: the per-seed ratios ‖w_bf16‖/‖w_fp32‖ (seeds present in both arms)."""
        mine, ref = seeds(arm, w), seeds(FP32, w)
        common = sorted(set(mine) & set(ref))
        out: dict[int, list[float]] = {}
        for s in common:
            a, b = dict(curves[mine[s].id]["weight_norm"]), dict(curves[ref[s].id]["weight_norm"])
            for step in sorted(set(a) & set(b)):
                out.setdefault(step, []).append(a[step] / b[step] if b[step] else math.inf)
        return out

    # 1. rounding
    kahan = norm_ratios(KAHAN, wd)
    kahan_dev = max(abs(sum(v) / len(v) - 1.0) for v in kahan.values())
    tracks = kahan_dev <= TRACK_TOLERANCE
    torch_final = S.Stat.of(norm_ratios(TORCH, wd)[max(norm_ratios(TORCH, wd))])
    kahan_final = S.Stat.of(kahan[max(kahan)])
    noise_dev = {arm: max(abs(sum(v) / len(v) - 1.0) for v in norm_ratios(arm, 0.0).values()) for arm in (KAHAN, TORCH)}

    def decay_effect(arm):  # ‖w_λ‖/‖w_0‖ at the end, per seed: what the decay did within one arm
        on, off = seeds(arm, wd), seeds(arm, 0.0)
        return S.Stat.of(on[s].final["weight_norm"] / off[s].final["weight_norm"] for s in sorted(set(on) & set(off)))

    effect = {arm: decay_effect(arm) for arm in (FP32, KAHAN, TORCH)}
    # torch's arm: judged on the decay's effect within the arm, so that bf16's other roundings
    # (its moments and steps are bf16 too) do not count as the decay's
    lost = effect[TORCH].mean - effect[FP32].mean
    deviates = S.decide(abs(lost) - TRACK_TOLERANCE, S.spread(effect[TORCH], effect[FP32]))
    rounding = S.combine([tracks, deviates])

    # 2. stability at λ = 0 in bf16 (autocast, the paper's) against fp32 λ = 0 and bf16 λ > 0
    def unstable_count(arm, w):
        return sum(unstable(curves[r.id].get("train_loss", []), r.final.get("train_loss", math.nan))
                   for r in cells[(arm, w)])

    counts = {key: unstable_count(*key) for key in [(AUTOCAST, 0.0), (FP32, 0.0), (AUTOCAST, wd), (KAHAN, 0.0)]}
    n0 = len(cells[(AUTOCAST, 0.0)])
    if counts[(AUTOCAST, 0.0)] * 2 > n0 and counts[(FP32, 0.0)] == 0 and counts[(AUTOCAST, wd)] == 0:
        stability = True
    elif counts[(AUTOCAST, 0.0)] == 0 or counts[(FP32, 0.0)] or counts[(AUTOCAST, wd)]:
        stability = False
    else:
        stability = None
    held = S.combine([rounding, stability])

    loss = {key: S.Stat.of(r.final["test_loss"] for r in group) for key, group in cells.items()}
    n = min(len(v) for v in cells.values())
    line = verdict_line(NAME, held, (
        f"rounding [{S.word(rounding)}]: at λ={wd:g}, decay's effect "
        f"‖w_λ‖/‖w_0‖: fp32 {effect[FP32].text('.3f')}, torch AdamW bf16 {effect[TORCH].text('.3f')} "
        f"[{S.word(deviates)}: its decay rounds away], decaylab bf16 {effect[KAHAN].text('.3f')}; ‖w‖ bf16/fp32 "
        f"final: decaylab {kahan_final.text('.3f')} (max trajectory deviation {kahan_dev:.2%}, tolerance "
        f"{TRACK_TOLERANCE:.0%}) [{S.word(tracks)}], torch {torch_final.text('.3f')}. Stability [{S.word(stability)}]: "
        f"unstable runs bf16-autocast λ=0 {counts[(AUTOCAST, 0.0)]}/{n0}, fp32 λ=0 {counts[(FP32, 0.0)]}/"
        f"{len(cells[(FP32, 0.0)])}, bf16-autocast λ={wd:g} {counts[(AUTOCAST, wd)]}/{len(cells[(AUTOCAST, wd)])}; "
        f"final test loss fp32 {loss[(FP32, 0.0)].text('.3f')} vs autocast {loss[(AUTOCAST, 0.0)].text('.3f')} "
        f"at λ=0; {n} seeds"
    ))
    numbers = {
        "weight_decay": wd, "rounding": S.word(rounding), "stability": S.word(stability),
        "kahan_max_trajectory_deviation": kahan_dev, "kahan_tracks_fp32": S.word(tracks),
        "torch_final_norm_ratio": torch_final.plain(), "kahan_final_norm_ratio": kahan_final.plain(),
        "torch_deviates": S.word(deviates),
        "bf16_noise_at_lambda0_max_deviation": noise_dev,
        "decay_effect_norm_ratio": {arm: s.plain() for arm, s in effect.items()},
        "unstable_runs": {f"{k[0]} λ={k[1]:g}": v for k, v in counts.items()},
        "test_loss": {f"{k[0]} λ={k[1]:g}": v.plain() for k, v in loss.items()}, "seeds": n,
    }
    table = [{"arm": arm, "λ": f"{w:g}",
              "final ‖w‖": S.Stat.of(r.final["weight_norm"] for r in cells[(arm, w)]).text(".3f"),
              "‖w‖ / fp32's": S.Stat.of(norm_ratios(arm, w)[max(norm_ratios(arm, w))]).text(".4f"),
              "final test loss": loss[(arm, w)].text(".4f"),
              "unstable": f"{unstable_count(arm, w)}/{len(cells[(arm, w)])}"}
             for arm, w in sorted(cells) if (FP32, w) in cells]
    prose = (f"Weight-norm ratios are per seed (the same initial weights and data order in every arm), "
             f"mean ± sample std over seeds. The λ = 0 rows show what bf16 alone does to ‖w‖ (max seed-mean "
             f"trajectory deviation from fp32: decaylab {noise_dev[KAHAN]:.2%}, torch {noise_dev[TORCH]:.2%}). "
             f"A run is unstable when its train loss ends non-finite or rises more than {SPIKE} nats above its "
             f"running minimum.")
    sections = [Section("bf16: decay rounding and λ = 0 stability", prose=prose, table=table,
                        figures=[("‖w‖ through the run (seed means) and train loss at λ = 0 and λ > 0",
                                  _figure(cells, curves, wd))])]
    return Verdict(NAME, held, line, numbers, sections)


def _figure(cells, curves, wd):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2))
    axes = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for (arm, w), group in sorted(cells.items()):
        style = "-" if w else ":"
        for ax, metric in zip(axes, ("weight_norm", "train_loss"), strict=True):
            series = [curves[r.id].get(metric, []) for r in group]
            length = min(len(s) for s in series)
            if not length:
                continue
            xs = [s for s, _ in series[0][:length]]
            ys = [sum(c[i][1] for c in series) / len(series) for i in range(length)]
            ax.plot(xs, ys, style, label=f"{arm}, λ={w:g}")
            ax.set_xlabel("step")
            ax.set_ylabel(metric.replace("_", " "))
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    return fig


BF16 = register(Reproduction(
    name=NAME,
    title="bf16: decay that rounds away, and instability without decay",
    claim=("in pure bf16, torch's AdamW loses the decay to rounding while decaylab's compensated update keeps the "
           "fp32 trajectory (within 1%); bf16 with λ=0 is the unstable case"),
    source="pytorch PR #64475 (decay below the dtype's resolution); optimi's Kahan-compensated updates; D'Angelo, "
           "Andriushchenko et al., 'Why do we need weight decay in modern deep learning?', NeurIPS 2024, LLM section "
           "(bfloat16 divergences)",
    analyze=analyze,
))
