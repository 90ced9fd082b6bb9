"""``decaylab demo``, the main job, as an entry of the reproduction registry without a claim.

On MNIST-1D (generated locally), the MLP with BatchNorm (``mlp-bn``: its hidden weights are
scale-invariant, so weight decay sets their effective learning rate, as in the AdamW paper's
networks), trained long enough to over-fit without decay: Adam+L2, AdamW in torch's convention,
AdamW in the paper's convention (``decay_scale="schedule"``), ProxAdam and the Euclidean-proximal
AdamP, each over an lr × λ grid whose λ range brackets every learning rate's optimum, 3 seeds and a
cosine schedule (the checked-in sweep spec ``decaylab/sweep/specs/demo.toml``, which ``decaylab sweep
demo`` runs too). It runs as every reproduction runs (:meth:`~decaylab.reproduce.core.Reproduction.run`);
it states no claim, so its status is ``REPORTED``.

What it reports (:mod:`decaylab.demo` prints it): the report's table (per method, the test accuracy
of the cell validation selected), and the statistic of the ``decoupling`` reproduction for every
method (:func:`decaylab.reproduce.decoupling.method_slopes`): in each learning rate's row where λ
matters (its best λ beats the smallest by ≥ :func:`min_gain` in seed-mean validation loss), each
seed's ``λ*`` (the validation-loss minimum refined by a parabola in ``log λ``), and each seed's slope
of ``log λ*`` against ``log lr`` — 0 when the best λ does not move with lr (tune them one at a time),
−1 when ``lr·λ`` is what matters — with its mean and 95% t-interval over the seeds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..report.build import Section
from ..sweep.spec import SPECS_DIR
from . import decoupling as D
from . import stats as S
from .core import Reproduction, Verdict, claim_numbers, register

NAME = "demo"


def min_gain() -> float:
    """A row (learning rate) counts when its best λ beats the grid's smallest λ by this much seed-mean
    validation loss (nats): the decoupling reproduction's ``[claim] min_gain``, read from its spec."""
    return claim_numbers(D.REPRODUCTION.spec("small"), ("min_gain",))["min_gain"]


def analyze(store_path: str | Path, spec: Any, scale: str) -> Verdict:
    """The demo states no claim: its verdict says what ran and each method's slope of log λ* against log lr."""
    losses, _, _ = D.read(store_path, spec)
    gain = min_gain()
    methods = {label: D.method_slopes(label, grid, min_gain=gain) for label, grid in losses.items()}
    seeds = max((len(m.seeds) for m in methods.values()), default=0)
    runs = sum(len(grid) for grid in losses.values())
    slopes = "; ".join(f"{label} {pm_of(m)}" for label, m in methods.items())
    line = (f"{NAME}: {S.REPORTED} — {runs} finished runs, {seeds} seeds; slope of log λ* against log lr "
            f"(mean ± 95% t-interval over seeds; 0 axis-aligned, −1 a fixed lr·λ): {slopes}")
    table = D.slope_summary(methods)
    numbers = {"runs": runs, "seeds": seeds, "methods": {label: m.plain() for label, m in methods.items()},
               "slope_table": table, "min_gain": gain}
    sections = [Section(
        "The best λ of each learning rate", (
            "For each method, the learning rates where λ matters (the best λ beats the smallest by ≥ "
            f"{gain:g} in seed-mean validation loss); in each, every seed's λ* is the validation-loss minimum "
            "over the λ grid refined by a parabola in log λ, and every seed's slope is the least-squares slope of "
            "log λ* against log lr: 0 when the best λ does not depend on lr, −1 when lr·λ is what matters. "
            "`decaylab reproduce decoupling` judges the AdamW paper's claim with this statistic."),
        table=[{"method": label, "rows where λ matters (lr)": ", ".join(f"{lr:g}" for lr in m.rows) or "none",
                "λ* per row (geomean over seeds)": ", ".join(f"{m.geomean_optimum(lr):.2g}" for lr in m.rows),
                "slope per seed": ", ".join(f"{x:+.2f}" for x in m.slopes),
                "slope (mean ± 95% t)": pm_of(m)} for label, m in methods.items()],
        figures=[("λ* of each row where λ matters, per seed (dots) and their geometric mean (line).",
                  D.optimum_figure(methods))])] if methods else []
    return Verdict(NAME, None, line, numbers, sections, claim=False, seeds=seeds)


def table_text(summary: dict[str, Any], numbers: dict[str, Any]) -> str:
    """What ``decaylab demo`` prints: per method, the test accuracy of the cell validation selected (the
    report's ``summary``), its lr and λ, and the slope of log λ* against log lr (``numbers`` of the verdict).

    >>> print(table_text({"methods": {"AdamW": {"method": "AdamW", "best_test_acc": 0.7, "best_test_acc_std": 0.01,
    ...                                          "best_lr": 0.04, "best_weight_decay": 0.3}}},
    ...                  {"methods": {"AdamW": {"slope": {"mean": -0.8, "half_width": 0.4}, "slope_per_seed":
    ...                                         [-0.8, -0.9, -0.7], "rows_used": [0.01, 0.02]}}}))
    method  best test acc (%)  best lr  best λ  slope of log λ* vs log lr  per seed             rows (lr)
    AdamW   70.0 ± 1.0         0.04     0.3     -0.80 ± 0.40               -0.80, -0.90, -0.70  0.01, 0.02
    """
    head = ("method", "best test acc (%)", "best lr", "best λ", "slope of log λ* vs log lr", "per seed", "rows (lr)")
    rows = [head]
    for label, row in summary["methods"].items():
        m = numbers["methods"].get(row.get("method", label), {})
        slope = m.get("slope") or {}
        mean, half = slope.get("mean"), slope.get("half_width")
        acc, std = row.get("best_test_acc"), row.get("best_test_acc_std")
        rows.append((
            row.get("method", label),
            "–" if acc is None else f"{100 * acc:.1f}" + ("" if std is None else f" ± {100 * std:.1f}"),
            "–" if row.get("best_lr") is None else f"{row['best_lr']:.3g}",
            "–" if row.get("best_weight_decay") is None else f"{row['best_weight_decay']:.3g}",
            "–" if mean is None else f"{mean:+.2f}" + ("" if half is None else f" ± {half:.2f}"),
            ", ".join("–" if x is None else f"{x:+.2f}" for x in m.get("slope_per_seed", [])),
            ", ".join(f"{lr:g}" for lr in m.get("rows_used", [])) or "none",
        ))
    widths = [max(len(r[k]) for r in rows) for k in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def pm_of(m: D.MethodSlopes) -> str:
    """``"-1.40 ± 0.30"``: the mean slope and its 95% t half width (the mean alone with one seed)."""
    return m.slope().text("+.2f").split(" (")[0].replace(" ± ∞", "")


REPRODUCTION = register(Reproduction(
    name=NAME,
    title="the main job: lr × λ for five treatments of weight decay on MNIST-1D, with the report",
    claim=None,
    source="Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019, Fig. 2 (the lr × λ landscape)",
    analyze=analyze,
    specs={"small": SPECS_DIR / "demo.toml"},
    seeds=3,
    stack=48,
    store="runs/demo.sqlite",
))
