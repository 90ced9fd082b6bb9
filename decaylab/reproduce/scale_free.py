r"""Reproduction 3, ``scale-free``: which Adam variants ignore a rescaled loss, and does it matter?

**Claims** (Zhuang, Liu, Cutkosky & Orabona, TMLR 2022; Schaipp, ICLR 2023 blog track):

1. *Scale-freeness.* Multiply the loss by ``c`` (10, 100). Adam's direction ``m̂/(ε+√v̂)`` is then
   unchanged when ``ε = 0``, so Adam, AdamW (decoupled decay) and ProxAdam (exact proximal step)
   follow the same iterates; Adam+L2 (the ``λw`` term is not scaled with the loss) and the
   Euclidean proximal step ``w/(1 + s·λ/D)`` ("AdamP", ``D = ε + √v̂`` scales with ``c``) do not.
2. *It matters without BatchNorm.* Without BN, AdamW beats Adam+L2 (best cell of an lr × λ grid);
   with BN they tie.

**Test of 1** (``specs/scale-free-iterates.toml``, ``…-iterates-paper.toml``): the spec's runs
(every method × a loss scale ∈ {1, 10, 100}, the ``loss_scale:C`` callback, × 3 seeds, ``eps = 1e-30``)
are trained by this module's
analysis itself with :func:`decaylab.train.train_stacked` (the seeds of one method and scale as one
stacked model), not by the sweep: the sweep's store keeps metrics, and the claim is about the
parameters. An instrument snapshots every model's parameters 10 times per run; the distance of run
``(method, c, seed)`` is ``‖w_c − w_1‖ / ‖w_1‖`` against the same method and seed at ``c = 1``.
Float32 rounding makes even exactly scale-free updates differ in the last bits (``10·g`` is
rounded), so "unchanged" means a relative distance below :data:`UNCHANGED` (1e-3) and "changed"
one above :data:`CHANGED` (1e-2), read at the first snapshot (a tenth of the run). Later, training
amplifies the last-bit differences: with ``ε → 0`` a coordinate whose gradient is ~0 still takes a
full ``±lr`` step whose sign rounding decides, so even scale-free runs part ways after a few hundred
steps (measured: up to 0.1 on MNIST-1D after 300 steps, against 0.5 for Adam+L2). The end-of-run
distances are reported beside the verdict. ``ε`` is 1e-30 rather than
0 because ``ε = 0`` gives ``0/0 = NaN`` on coordinates whose gradient has been exactly zero (weights
of ReLU units dead on the first batches); 1e-30 is far below ``√v̂`` of every other coordinate.

**Test of 2** (the sweep, ``specs/scale-free.toml``, ``…-paper.toml``): Adam+L2 and AdamW over an
lr × λ grid with 3 seeds, on a model without and with BatchNorm (small: the MNIST-1D MLP and
``mlp-bn``; paper: ResNet-20 without and with BN on CIFAR-10). Each method's best cell is the best
seed-averaged validation accuracy (test in a store from before runs recorded validation); the gap of a
seed is AdamW's test accuracy at its selected cell minus Adam+L2's
at its own. "Beats": the mean gap is positive and above twice its standard error. "Tie": the mean
gap's magnitude is within twice its standard error or under :data:`TIE_POINTS`.

**Verdict.** HELD when both claims hold; the line states each part with its numbers.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..report.analysis import build_grids, choose_metric
from ..report.build import Section
from ..store import load_sweep
from .core import SPEC_DIR, Reproduction, Verdict, register
from .stats import mean_std, pm, verdict_line, word

__all__ = ["REPRODUCTION", "analyze", "iterate_distances", "judge_iterates", "judge_batchnorm", "has_batchnorm",
           "expected_scale_free", "ITERATE_SPECS", "UNCHANGED", "CHANGED", "TIE_POINTS"]

ITERATE_SPECS = {"small": "scale-free-iterates.toml", "paper": "scale-free-iterates-paper.toml"}
UNCHANGED = 1e-3  # relative iterate distance below which a run counts as unchanged
CHANGED = 1e-2  # and above which as changed
TIE_POINTS = 0.005  # |gap| below half a point of test accuracy is a tie whatever the seeds say
SNAPSHOTS = 10


def expected_scale_free(config: Any) -> bool:
    """Whether the claim says this run's iterates ignore the loss scale (``eps → 0``): Adam without
    decay, decoupled decay and ProxAdam yes; Adam+L2 and the Euclidean proximal step no."""
    if config.optimizer != "adam":
        raise ValueError(f"optimizer must be 'adam' in a scale-freeness run; got {config.optimizer!r}")
    from decaylab.optim import RULES

    return config.weight_decay == 0 or RULES[config.decay].scale_free


def loss_scale(config: Any) -> float:
    """The factor a run's training loss is multiplied by (its ``loss_scale:C`` callback; 1 without)."""
    scale = 1.0
    for callback in config.parsed_callbacks:
        scale *= callback.loss_scale()
    return scale


def has_batchnorm(model: str) -> bool:
    """Whether :func:`decaylab.models.build` ``(model)`` has BatchNorm layers."""
    from torch.nn.modules.batchnorm import _BatchNorm

    from ..models import build

    return any(isinstance(m, _BatchNorm) for m in build(model).modules())


# ---------------------------------------------------------------------------------------- claim 1


def _snapshot_instrument(interval: int):
    import torch

    from ..diagnostics.base import Instrument

    class Snapshots(Instrument):
        """Keeps a float64 copy of every model's flattened parameters (``(K, n)``) when sampled."""

        name = "snapshots"

        def __init__(self, interval: int):
            super().__init__(interval)
            self.steps: list[int] = []
            self.values: list[torch.Tensor] = []

        def measure(self, ctx):
            k = ctx.stacked or 1
            flat = torch.cat([p.detach().reshape(k, -1).double() for p in ctx.params()], 1)
            self.steps.append(ctx.step)
            self.values.append(flat.cpu().clone())
            norms = flat.norm(dim=1)
            return {"snapshot_norm": norms if ctx.stacked else norms[0]}

    return Snapshots(interval)


def iterate_distances(spec: Any, *, progress: bool = False) -> dict[str, Any]:
    """Train the runs of an iterate spec and measure how far each loss scale moves the iterates.

    Returns ``{"steps": [...], "runs": {(label, loss scale, seed): {"distance": [...], "early": d0,
    "final": d, "scale_free": bool, "test_acc": a}}}`` where ``distance[t] = ‖w_c(t) − w_1(t)‖ /
    ‖w_1(t)‖`` at the snapshot steps (every tenth of the run), against the same label and seed at
    loss scale 1; ``early`` is the first snapshot's, ``final`` the last's.
    """
    from ..train import total_steps, train_stacked

    configs = spec.configs()
    groups: dict[tuple[str, float], list[Any]] = {}
    for label, config in configs:
        groups.setdefault((label, loss_scale(config)), []).append(config)
    for label in {label for label, _ in groups}:
        if (label, 1.0) not in groups:
            raise ValueError(f"the iterate spec {spec.name!r}: method {label!r} needs runs with loss scale 1 "
                             "(the reference)")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(groups), desc=f"{spec.name} (iterates)", unit="group", dynamic_ncols=True)
    snapshots: dict[tuple[str, float, int], tuple[list[int], list[Any], float]] = {}
    steps_of = None
    for (label, scale), group in groups.items():
        if bar is not None:
            bar.set_postfix_str(f"{label} ×{scale:g}", refresh=True)
        interval = max(1, total_steps(group[0]) // SNAPSHOTS)
        snap = _snapshot_instrument(interval)
        results = train_stacked(group, instruments=[snap])
        steps_of = snap.steps
        for k, (config, result) in enumerate(zip(group, results, strict=True)):
            snapshots[(label, scale, config.seed)] = ([v[k] for v in snap.values], result.final)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    runs: dict[tuple[str, float, int], dict[str, Any]] = {}
    for label, config in configs:
        key = (label, loss_scale(config), config.seed)
        mine, final = snapshots[key]
        ref, _ = snapshots[(label, 1.0, config.seed)]
        distance = [float((a - b).norm() / b.norm()) if float(b.norm()) > 0 else math.nan
                    for a, b in zip(mine, ref, strict=True)]
        runs[key] = {"distance": distance, "early": distance[0] if distance else math.nan,
                     "final": distance[-1] if distance else math.nan,
                     "scale_free": expected_scale_free(config), "test_acc": final.get("test_acc", math.nan),
                     "decay": config.decay, "weight_decay": config.weight_decay}
    return {"steps": steps_of or [], "runs": runs}


def judge_iterates(runs: dict[tuple[str, float, int], dict[str, Any]]) -> tuple[bool | None, dict[str, Any]]:
    """HELD when every run expected scale-free stays within :data:`UNCHANGED` of its ``c = 1`` twin
    and every other run (``c ≠ 1``) moves further than :data:`CHANGED`, at the first snapshot
    (``early``; the module docstring says why not at the end).

    >>> runs = {("AdamW", 10.0, 0): {"early": 1e-6, "final": 0.05, "scale_free": True},
    ...         ("Adam+L2", 10.0, 0): {"early": 0.3, "final": 0.5, "scale_free": False}}
    >>> judge_iterates(runs)[0]
    True
    >>> runs[("AdamW", 10.0, 0)]["early"] = 0.2
    >>> judge_iterates(runs)[0]
    False
    """
    free = [r["early"] for (_, c, _), r in runs.items() if c != 1.0 and r["scale_free"]]
    other = [r["early"] for (_, c, _), r in runs.items() if c != 1.0 and not r["scale_free"]]
    final_free = max((r["final"] for (_, c, _), r in runs.items() if c != 1.0 and r["scale_free"]), default=math.nan)
    final_other = min((r["final"] for (_, c, _), r in runs.items() if c != 1.0 and not r["scale_free"]),
                      default=math.nan)
    worst_free = max(free, default=math.nan)
    least_other = min(other, default=math.nan)
    if not free or not other or not (math.isfinite(worst_free) and math.isfinite(least_other)):
        held = None
    elif worst_free < UNCHANGED and least_other > CHANGED:
        held = True
    elif worst_free >= CHANGED or least_other <= UNCHANGED:
        held = False
    else:
        held = None  # between the thresholds: neither clearly unchanged nor clearly changed
    ratio = least_other / worst_free if worst_free > 0 else math.inf
    return held, {"max_distance_scale_free": worst_free, "min_distance_others": least_other, "ratio": ratio,
                  "final_max_distance_scale_free": final_free, "final_min_distance_others": final_other}


# ---------------------------------------------------------------------------------------- claim 2


def judge_batchnorm(gaps_no_bn: Sequence[float], gaps_bn: Sequence[float]) -> tuple[bool | None, dict[str, Any]]:
    """Claim 2 from the per-seed accuracy gaps (AdamW − Adam+L2, each at its best cell).

    >>> judge_batchnorm([0.03, 0.02, 0.04], [0.001, -0.002, 0.0])[0]
    True
    >>> judge_batchnorm([0.0, -0.01, 0.005], [0.001, -0.002, 0.0])[0]
    False
    """
    out: dict[str, Any] = {}
    verdicts = []
    for name, gaps in (("no_bn", gaps_no_bn), ("bn", gaps_bn)):
        mean, std = mean_std(gaps)
        sem = std / math.sqrt(len(gaps)) if len(gaps) > 1 and math.isfinite(std) else math.nan
        out[name] = {"gaps": list(gaps), "mean": mean, "std": std, "sem": sem}
        if not gaps or not math.isfinite(sem):
            verdicts.append(None)
        elif name == "no_bn":  # AdamW beats Adam+L2
            verdicts.append(mean > 2 * sem and mean > 0)
        else:  # a tie
            verdicts.append(abs(mean) <= 2 * sem or abs(mean) < TIE_POINTS)
    out["beats_without_bn"], out["tie_with_bn"] = verdicts
    held = None if None in verdicts else all(verdicts)
    return held, out


def _best_gaps(runs: list[Any], coupled: str, decoupled: str, per_model: Any) -> dict[str, Any]:
    """Each method's best cell, selected on validation error (test error in an older store), and the per-seed
    test-accuracy gaps AdamW − Adam+L2 at their selected cells."""
    grids = {grid.label: grid for grid in build_grids(runs, choose_metric(runs), per_model)}
    out: dict[str, Any] = {}
    per_seed: dict[str, dict[int, float]] = {}
    for label in (coupled, decoupled):
        grid = grids[label]
        i, j = grid.best
        ids = set(grid.run_ids[(i, j)])
        per_seed[label] = {run.config["seed"]: run.final["test_acc"] for run in runs if run.id in ids}
        out[label] = {"lr": float(grid.lrs[i]), "weight_decay": float(grid.weight_decays[j]),
                      "acc": mean_std(per_seed[label].values())}
    seeds = sorted(set(per_seed[coupled]) & set(per_seed[decoupled]))
    out["gaps"] = [per_seed[decoupled][s] - per_seed[coupled][s] for s in seeds]
    return out


def analyze(store_path: str | Path, spec: Any, scale: str, *, progress: bool = False) -> Verdict:
    from ..sweep import load_spec

    data = load_sweep(store_path, spec.name)
    # claim 2: the four methods of the sweep, told apart by their configs
    cells: dict[tuple[bool, str], str] = {}
    bn_of: dict[str, bool] = {}
    for run in data.runs:
        model = run.config["model"]
        if model not in bn_of:
            bn_of[model] = has_batchnorm(model)
        cells.setdefault((bn_of[model], run.config["decay"]), run.label)
    need = [(bn, decay) for bn in (False, True) for decay in ("l2", "decoupled")]
    if any(key not in cells for key in need):
        raise ValueError(f"the sweep {spec.name!r} needs finished Adam+L2 (decay 'l2') and AdamW (decay "
                         "'decoupled') runs on a model without and one with BatchNorm")
    gaps = {}
    for bn in (False, True):
        subset = [run for run in data.runs if bn_of[run.config["model"]] == bn]
        gaps[bn] = _best_gaps(subset, cells[(bn, "l2")], cells[(bn, "decoupled")], data.per_model)
    held_bn, bn_numbers = judge_batchnorm(gaps[False]["gaps"], gaps[True]["gaps"])

    # claim 1: the iterate spec, trained here
    iterate_spec = load_spec(SPEC_DIR / ITERATE_SPECS[scale])
    iterates = iterate_distances(iterate_spec, progress=progress)
    held_it, it_numbers = judge_iterates(iterates["runs"])

    held = None if None in (held_it, held_bn) else (held_it and held_bn)
    if held_it is False or held_bn is False:
        held = False
    early_step = iterates["steps"][0] if iterates["steps"] else 0
    part1 = (f"iterates {word(held_it)}: after {early_step} steps loss ×10/×100 with eps→0 moves Adam/AdamW/"
             f"ProxAdam by at most {it_numbers['max_distance_scale_free']:.1e} (relative), Adam+L2/AdamP by at least "
             f"{it_numbers['min_distance_others']:.1e} (at the end, after float32 rounding is amplified: "
             f"{it_numbers['final_max_distance_scale_free']:.1e} vs {it_numbers['final_min_distance_others']:.1e})")
    nb, b = bn_numbers["no_bn"], bn_numbers["bn"]
    part2 = (f"BatchNorm {word(held_bn)}: AdamW − Adam+L2 best test acc without BN "
             f"{pm(100 * nb['mean'], 100 * nb['std'], '+.1f')} points, with BN "
             f"{pm(100 * b['mean'], 100 * b['std'], '+.1f')} ({len(nb['gaps'])} seeds)")
    line = verdict_line("scale-free", held, f"{part1}; {part2}")
    numbers = {"iterates": {**it_numbers, "held": held_it, "thresholds": [UNCHANGED, CHANGED]},
               "batchnorm": {**bn_numbers, "held": held_bn,
                             "best_cells": {("bn" if bn else "no_bn"): {k: v for k, v in g.items() if k != "gaps"}
                                            for bn, g in gaps.items()}}}
    sections = [_iterate_section(iterates, it_numbers, held_it), _batchnorm_section(gaps, bn_numbers, held_bn, cells)]
    return Verdict("scale-free", held, line, numbers, sections)


def _iterate_section(iterates, numbers, held) -> Section:
    runs = iterates["runs"]
    steps = iterates["steps"] or [0]
    labels = list(dict.fromkeys(label for label, _, _ in runs))
    scales = sorted({c for _, c, _ in runs if c != 1.0})
    table = []
    for label in labels:
        row: dict[str, Any] = {"method": label}
        any_run = next(r for (lab, _, _), r in runs.items() if lab == label)
        row["decay"] = f"{any_run['decay']} λ={any_run['weight_decay']:g}"
        row["claim"] = "unchanged" if any_run["scale_free"] else "changes"
        for c in scales:
            mine = [r for (lab, cc, _), r in runs.items() if lab == label and cc == c]
            row[f"distance ×{c:g} at step {steps[0]} / at the end (max over seeds)"] = (
                f"{max(r['early'] for r in mine):.1e} / {max(r['final'] for r in mine):.1e}")
        accs = {c: mean_std(r["test_acc"] for (lab, cc, _), r in runs.items() if lab == label and cc == c)
                for c in [1.0, *scales]}
        row["test acc (%) ×1 / " + " / ".join(f"×{c:g}" for c in scales)] = " / ".join(
            f"{100 * accs[c][0]:.1f}" for c in [1.0, *scales])
        table.append(row)
    prose = (
        "Each method trains the same runs (same seeds, so the same initial weights and batches) with the training "
        "loss multiplied by 1, 10 and 100 and Adam's ε → 0 (1e-30; exactly 0 divides 0 by 0 where a gradient has "
        "been exactly zero). The distance is ‖w_c − w_1‖ / ‖w_1‖ between the "
        f"parameters of the scaled run and its unscaled twin. Unchanged: below {UNCHANGED:g}; changed: above "
        f"{CHANGED:g}, read after the first {steps[0]} steps. Scale-free methods are not bit-identical in float32 "
        "(10·g rounds differently from g): their curves start at the rounding floor (~1e-7), and later jump when "
        "training amplifies the last-bit differences — with ε → 0 a coordinate whose gradient is ~0 still takes a "
        "full ±lr step whose sign rounding decides. Result: "
        f"{word(held)}; the smallest distance of a non-scale-free run is {numbers['ratio']:.1e} times the largest "
        "of a scale-free one."
    )
    return Section("Scale-freeness: iterates under a rescaled loss", prose,
                   figures=[("Relative distance to the unscaled run against the step (mean over seeds; dashed: ×10, "
                             "solid: ×100). Grey band: between the thresholds.", _iterate_figure(iterates))],
                   table=table)


def _iterate_figure(iterates):
    from matplotlib.figure import Figure

    steps = np.array(iterates["steps"], dtype=float)
    runs = iterates["runs"]
    labels = list(dict.fromkeys(label for label, _, _ in runs))
    figure = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = figure.subplots()
    floor = 1e-12
    for k, label in enumerate(labels):
        named = False
        for c, style in ((10.0, "--"), (100.0, "-")):
            curves = [r["distance"] for (lab, cc, _), r in runs.items() if lab == label and cc == c]
            if not curves:
                continue
            mean = np.maximum(np.nanmean(np.array(curves, dtype=float), axis=0), floor)
            ax.plot(steps, mean, style, color=f"C{k}", label=None if named else label)
            named = True
    ax.axhspan(UNCHANGED, CHANGED, color="0.85", zorder=0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("‖w_c − w_1‖ / ‖w_1‖")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return figure


def _batchnorm_section(gaps, numbers, held, cells) -> Section:
    table = []
    for bn in (False, True):
        g = gaps[bn]
        n = numbers["bn" if bn else "no_bn"]
        for decay in ("l2", "decoupled"):
            label = cells[(bn, decay)]
            best = g[label]
            table.append({"model": "with BN" if bn else "without BN", "method": label,
                          "best lr": f"{best['lr']:g}", "best λ": f"{best['weight_decay']:g}",
                          "test acc of the selected cell (%)": pm(100 * best["acc"][0], 100 * best["acc"][1],
                                                                                  ".1f"),
                          "gap AdamW − Adam+L2 (points)": pm(100 * n["mean"], 100 * n["std"], "+.2f")
                          if decay == "decoupled" else ""})
    prose = (
        "Each method's best cell is its best seed-averaged validation accuracy over the lr × λ grid (heatmaps "
        "above). The gap of a seed is AdamW's test accuracy at its selected cell minus Adam+L2's at its own; ± is "
        "the std over seeds. "
        f"Without BN the claim needs a positive mean gap above twice its standard error; with BN a tie: |gap| within "
        f"twice its standard error or under {100 * TIE_POINTS:g} points. Result: {word(held)} (without BN: "
        f"{'beats' if numbers['beats_without_bn'] else 'does not beat'}; with BN: "
        f"{'tie' if numbers['tie_with_bn'] else 'no tie'})."
    )
    return Section("With and without BatchNorm: AdamW vs Adam+L2", prose,
                   figures=[("Per-seed accuracy gap AdamW − Adam+L2 at each method's best cell.",
                             _gap_figure(numbers))], table=table)


def _gap_figure(numbers):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.6, 3.2), layout="constrained")
    ax = figure.subplots()
    for k, key in enumerate(("no_bn", "bn")):
        n = numbers[key]
        values = [100 * g for g in n["gaps"]]
        if not values:
            continue
        ax.bar(k, 100 * n["mean"], color=f"C{k}", alpha=0.35,
               yerr=100 * n["std"] if math.isfinite(n["std"]) else None, capsize=4)
        ax.scatter([k] * len(values), values, color=f"C{k}", zorder=3, s=18)
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_xticks([0, 1], ["without BN", "with BN"])
    ax.set_ylabel("AdamW − Adam+L2 (points)")
    ax.grid(axis="y", alpha=0.3)
    return figure


REPRODUCTION = register(Reproduction(
    name="scale-free",
    title="AdamW and ProxAdam ignore the loss scale, Adam+L2 does not; it matters without BatchNorm",
    claim="With eps → 0, loss ×10 / ×100 leaves Adam, AdamW and ProxAdam iterates unchanged and changes Adam+L2 "
          "and the Euclidean prox (AdamP); without BN AdamW beats Adam+L2, with BN they tie. Verdict: iterate "
          "distances and accuracy gaps.",
    source="Zhuang, Liu, Cutkosky & Orabona, Understanding AdamW through Proximal Methods and Scale-Freeness, "
           "TMLR 2022; Schaipp, Decay No More, ICLR 2023 blog track",
    analyze=analyze,
    stack=36,
))
