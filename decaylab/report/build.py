r"""``build_report``: read one sweep from the store, write the PNGs, ``report.html`` and ``summary.json``.

The report reads only the store (:mod:`decaylab.store.reader`). Per method (a label of the sweep
spec) it draws the lr × λ heatmap of the metric (test error by default; one colour scale for all
methods), and for each method's best cell the learning curves, the weight norm and the effective
learning rate, averaged over seeds with a ±1 std band. The table gives, per method, the best cell
(mean ± std over its seeds), the separability score, the diagonal slope and the additivity
(definitions: :mod:`decaylab.report.analysis`).

Reproductions add their own sections with :class:`Section`.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from .. import __version__
from .._paths import check_output_dir
from ..store import SweepData, load_curves, load_sweep
from . import figures as fig
from .analysis import MethodGrid, build_grids, choose_metric, is_error, method_summary
from .html import HtmlFigure, definitions_html, figure_html, page, prose_html, slug, table_html, unique_slugs

__all__ = ["Section", "ReportResult", "build_report", "default_out_dir", "format_table", "SEPARABILITY_TEXT",
           "DEFAULT_DELTA"]

#: Tolerance of the good region, in the metric's units (0.01 = 1 percentage point of the error rate).
DEFAULT_DELTA = 0.01

SEPARABILITY_TEXT = """\
Separability (the rectangle score). Let E(i, j) be the mean over seeds of the metric at learning rate
i and weight decay j. The good region G is the set of cells with E ≤ E_min + δ, where E_min is the best
cell and δ = {delta} (in the metric's units). rows(G) and cols(G) are the learning rates and weight
decays that occur in G. separability = |G| / |observed cells of rows(G) × cols(G)|. It is 1.0 when G is
a full rectangle {{good lr}} × {{good λ}}, so that lr and λ can be tuned one at a time, and 1/n for a
one-cell-wide diagonal band over n learning rates. Cells no run filled do not count against it; a G of
one row or one column scores 1.0 trivially, so read it together with the number of good cells. A smooth
surface that is an lr effect plus a λ effect has a good region shaped like an axis-aligned ellipse, which
scores about π/4 ≈ 0.8 on a fine grid (5/9 for a plus of 5 cells); a diagonal band w cells wide scores
about w/n.

Diagonal slope. For every learning rate whose best cell is no worse than the median cell of the
heatmap, λ*(lr) is the weight decay of its best cell; the slope is the least-squares slope of
log10 λ* against log10 lr (rows whose best λ is 0 are left out). 0 means the best λ does not depend
on lr (axis-aligned). −1 means λ* ∝ 1/lr: a fixed product lr·λ is best, which is what coupled L2
shows, and what decoupled decay shows on a λ axis in torch's convention (decay lr_t·λ per step) when
the best decay per step does not depend on lr. +1 means λ* ∝ lr. Going from torch's convention to the
paper's (λ_paper = lr·λ_torch) adds 1 to the slope. Optima clamped at the edge of the grid flatten it.

Additivity. The fraction of the variance of E over the observed cells that an additive model
E(i, j) ≈ a(i) + b(j) explains (least squares; diverged cells count as the worst finite cell): 1.0
when the error is an lr effect plus a λ effect, so the best λ is the same for every lr. It needs no δ,
but cells far from the good region (divergence at large lr·λ, say) weigh as much as the good region.\
"""


@dataclass
class Section:
    """A section that a reproduction adds to the report, after the standard ones.

    ``prose`` is plain text (a blank line starts a paragraph); ``figures`` are ``(caption, figure)``
    pairs where a figure is a matplotlib ``Figure``, PNG bytes, or the path of a PNG file; ``table``
    is a list of row dicts (the columns are the keys of the first row).
    """

    title: str
    prose: str = ""
    figures: Sequence[tuple[str, Any]] = ()
    table: Sequence[dict[str, Any]] | None = None


SectionSource = Section | Callable[[SweepData], Section]


@dataclass
class ReportResult:
    """What :func:`build_report` wrote: the HTML file, the PNG files, the table as text, and the
    numbers behind it (``summary["methods"][name]`` has the table row of each method)."""

    html_path: Path
    png_paths: list[Path]
    table_text: str
    summary: dict[str, Any] = field(default_factory=dict)


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _best_text(row: dict[str, Any], metric: str) -> str:
    if is_error(metric) or row["best_test_acc"] is not None:
        mean, std = row["best_test_acc"], row["best_test_acc_std"]
        if mean is None:
            return "–"
        return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f}"
    mean, std = row["best_metric"], row["best_metric_std"]
    if mean is None:
        return "–"
    return f"{mean:.4g} ± {std:.2g}" if std is not None else f"{mean:.4g}"


def _table_rows(rows: Sequence[dict[str, Any]], metric: str) -> tuple[list[str], list[list[Any]]]:
    accuracy = is_error(metric) or all(r["best_test_acc"] is not None for r in rows)
    columns = [
        "method", "runs", ("best test acc (%)" if accuracy else f"best {metric}"), "seeds", "best lr", "best λ",
        "separability", "good cells", "diagonal slope", "additivity",
    ]
    table = []
    for r in rows:
        runs = f"{r['runs_done']}/{r['runs_total']}" if r["runs_total"] != r["runs_done"] else str(r["runs_done"])
        table.append([
            r["method"], runs, _best_text(r, metric), r["best_seeds"],
            fig.format_number(r["best_lr"]) if r["best_lr"] is not None else "–",
            fig.format_number(r["best_weight_decay"]) if r["best_weight_decay"] is not None else "–",
            _num(r["separability"], ".2f"), r["good_cells"], _num(r["diagonal_slope"], "+.2f"),
            _num(r["additivity"], ".2f"),
        ])
    return columns, table


def format_table(rows: Sequence[dict[str, Any]], metric: str = "test_error") -> str:
    """The method table as aligned plain text (what ``decaylab report`` prints).

    >>> row = {"method": "AdamW", "runs_done": 6, "runs_total": 6, "best_test_acc": 0.931,
    ...        "best_test_acc_std": 0.002, "best_metric": 0.069, "best_metric_std": 0.002, "best_seeds": 2,
    ...        "best_lr": 1e-3, "best_weight_decay": 0.1, "separability": 1.0, "good_cells": 2,
    ...        "diagonal_slope": 0.0, "additivity": 0.97}
    >>> print(format_table([row]))
    method  runs  best test acc (%)  seeds  best lr  best λ  separability  good cells  diagonal slope  additivity
    AdamW   6     93.10 ± 0.20       2      1e-3     1e-1    1.00          2           +0.00           0.97
    """
    columns, table = _table_rows(rows, metric)
    cells = [columns] + [[str(v) for v in row] for row in table]
    widths = [max(len(row[k]) for row in cells) for k in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def _series(grids: Sequence[MethodGrid], names: Sequence[str], store_path: str) -> dict[str, dict[str, Any]]:
    """Per method, its best cell's curves averaged over seeds: ``{name: {metric: (steps, mean, std, n)}}``."""
    best_ids = {name: grid.run_ids[grid.best] for name, grid in zip(names, grids, strict=True) if grid.best is not None}
    curves = load_curves(store_path, [run_id for ids in best_ids.values() for run_id in ids])
    series: dict[str, dict[str, Any]] = {}
    for name, ids in best_ids.items():
        metrics = sorted({metric for run_id in ids for metric in curves[run_id]})
        per_metric = {}
        for metric in metrics:
            runs = [curves[run_id].get(metric, []) for run_id in ids]
            per_metric[metric] = fig.mean_curve([run for run in runs if run])
        if "test_acc" in per_metric:
            steps, mean, std, n = per_metric["test_acc"]
            per_metric["test_error"] = (steps, 100.0 * (1.0 - mean), 100.0 * std, n)
        series[name] = per_metric
    return series


def _section_figure(caption: str, source: Any) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        return Path(source).read_bytes()
    if hasattr(source, "savefig"):
        return fig.png_bytes(source)
    raise TypeError(f"section figure {caption!r}: expected a matplotlib Figure, PNG bytes or a path, "
                    f"got {type(source).__name__}")


def default_out_dir(store_path: str | os.PathLike, sweep: str) -> Path:
    """Where a sweep's report goes when no folder is given: ``report-<sweep>`` beside the store."""
    return Path(store_path).resolve().parent / f"report-{slug(sweep)}"


def build_report(
    store_path: str | os.PathLike,
    sweep: str | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    sections: Sequence[SectionSource] = (),
    metric: str | None = None,
    delta: float = DEFAULT_DELTA,
) -> ReportResult:
    """Draw the report of one sweep of a run store.

    ``sweep=None`` takes the store's only sweep. ``out_dir`` (default: ``report-<sweep>`` beside the
    store) receives ``report.html`` (self-contained), the PNGs and ``summary.json``. ``metric`` is
    what selects and the heatmaps show, lower is better: ``val_error`` (``1 − val_acc``, the default when
    runs record ``val_acc``), else ``val_loss``, ``test_error``, ``test_loss`` (a store from before
    validation was recorded: it selects on test, as its report always did), or any key of the runs' final
    results. The table's test accuracy is that of the selected cell.
    ``delta`` is the tolerance of the good region for the separability score, in the metric's units.
    ``sections`` are :class:`Section` objects, or callables that take the :class:`SweepData` and
    return one.

    Raises :class:`FileNotFoundError` for a missing store and :class:`ValueError` for a file that is
    not a store, an unknown sweep (the message lists those available), a sweep with no finished run,
    or an output folder that cannot be written (a file, no permission); an :class:`OSError` when a
    write fails midway (a full disk).
    """
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta >= 0):
        raise ValueError(f"delta must be a finite number >= 0 (in the metric's units), got {delta!r}")
    data = load_sweep(store_path, sweep)
    metric = choose_metric(data.runs, metric)
    grids = build_grids(data.runs, metric, data.per_model)
    names = [grid.name for grid in grids]
    slugs = unique_slugs(names)
    out = Path(out_dir) if out_dir is not None else default_out_dir(store_path, data.name)
    check_output_dir(out, "out_dir" if out_dir is not None else "out_dir (default: beside the store)")

    rows = []
    for grid in grids:
        row = method_summary(grid, delta, data.label_counts.get(grid.label) if grid.name == grid.label else None)
        rows.append(row)
    table_text = format_table(rows, metric)

    written: list[Path] = []

    def save(name: str, png: bytes) -> None:
        path = out / name
        path.write_bytes(png)
        written.append(path)

    vmin, vmax, clipped = fig.color_range(grids, metric)
    heatmaps = []
    for grid, row, key in zip(grids, rows, slugs, strict=True):
        png = fig.png_bytes(fig.heatmap_figure(grid, metric, vmin, vmax, clipped, delta, row))
        save(f"heatmap-{key}.png", png)
        if row["best_lr"] is None:
            best = "no cell with a finite result"
        else:
            what = "test accuracy" if row["best_test_acc"] is not None else metric
            unit = " %" if row["best_test_acc"] is not None else ""
            best = (f"best {what} {_best_text(row, metric)}{unit} at lr = {fig.format_number(row['best_lr'])}, "
                    f"λ = {fig.format_number(row['best_weight_decay'])} ({row['best_seeds']} seeds)")
        heatmaps.append(HtmlFigure(
            id=f"heatmap-{key}", alt=f"lr × weight decay heatmap of {fig.metric_title(metric)} for {grid.name}",
            caption=f"{grid.name}: {best}.", png=png,
        ))

    series = _series(grids, names, data.store_path)
    available = {name for per in series.values() for name in per}
    loss_key = "val_loss" if "val_loss" in available and "test_loss" not in available else "test_loss"
    curve_specs = [
        ("learning-curves", "Learning curves",
         [("train_loss", "train loss", True), (loss_key, loss_key.replace("_", " "), True),
          ("test_error", "test error (%)", False)]),
        ("weight-norm", "Weight norm", [("weight_norm", "weight norm ‖w‖₂", False)]),
        ("effective-lr", "Effective learning rate", [("lr", "learning rate lr_t", True),
                                                     ("effective_lr", "effective learning rate", True)]),
    ]
    curve_figures = []
    for key, title, panels in curve_specs:
        present = [panel for panel in panels if panel[0] in available]
        if key == "effective-lr" and not any(p[0] == "effective_lr" for p in present):
            continue  # the schedule alone is not worth a figure
        if not present:
            continue
        seeds = sorted({curves[present[0][0]][3] for curves in series.values() if present[0][0] in curves})
        png = fig.png_bytes(fig.curves_figure(series, present, f"{title}: best configuration of each method"))
        save(f"{key}.png", png)
        curve_figures.append(HtmlFigure(
            id=key, alt=f"{title.lower()} against step for the best configuration of each method",
            caption=f"{title} of each method's best cell; mean over {'/'.join(map(str, seeds))} seed(s), "
                    f"band ±1 std.", png=png,
        ))

    resolved = [source if isinstance(source, Section) else source(data) for source in sections]
    for section in resolved:
        if not isinstance(section, Section):
            raise TypeError(f"a section callable must return a Section, got {type(section).__name__}")
    extra = []
    for section, key in zip(resolved, unique_slugs([section.title for section in resolved]), strict=True):
        figs = []
        for k, (caption, figure) in enumerate(section.figures, start=1):
            png = _section_figure(caption, figure)
            save(f"section-{key}-{k}.png", png)
            figs.append(HtmlFigure(id=f"section-{key}-{k}", alt=caption, caption=caption, png=png))
        extra.append((section, key, figs))

    generated = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    summary: dict[str, Any] = {
        "sweep": data.name,
        "store": os.fspath(store_path),
        "metric": metric,
        "delta": delta,
        "generated": generated,
        "decaylab": __version__,
        "status_counts": data.status_counts,
        "diverged_runs": data.diverged,
        "color_range": [vmin, vmax],
        "methods": {row["method"]: row for row in rows},
    }
    html_path = out / "report.html"
    html_path.write_text(_html(data, summary, rows, heatmaps, curve_figures, extra, metric, delta), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return ReportResult(html_path=html_path, png_paths=written, table_text=table_text, summary=summary)


_SELECTED_ON_VALIDATION = (" Validation selects (the best cell, the good region, the best λ of each lr); the test "
                            "accuracy in the table is that of the selected cell, so it never selects what it judges.")


def _html(
    data: SweepData, summary: dict[str, Any], rows: list[dict[str, Any]], heatmaps: list[HtmlFigure],
    curve_figures: list[HtmlFigure], extra: list[tuple[Section, str, list[HtmlFigure]]], metric: str, delta: float,
) -> str:
    counts = ", ".join(f"{n} {status}" + (f" ({data.diverged} diverged)" if status == "done" and data.diverged else "")
                       for status, n in data.status_counts.items() if n)
    meta = (f"store <code>{escape(data.store_path)}</code> · {escape(counts)} · metric: "
            f"{escape(fig.metric_title(metric))} · generated {escape(summary['generated'])} by decaylab "
            f"{escape(__version__)}")
    columns, table = _table_rows(rows, metric)
    if is_error(metric):
        unit = f"{100 * delta:g} percentage point{'' if 100 * delta == 1 else 's'} of {fig.metric_title(metric)[:-4]}"
    else:
        unit = f"in units of {metric}"
    summary_html = (
        table_html(columns, table, table_id="summary-table")
        + f"\n<p>Best cell: the lowest mean {escape(fig.metric_title(metric))} over seeds; ± is the standard "
        f"deviation over the seeds of that cell. Good region tolerance δ = {delta:g} "
        f"({escape(unit)}).{_SELECTED_ON_VALIDATION if metric.startswith('val') else ''}</p>"
    )
    vmin, vmax = summary["color_range"]
    heat_text = (
        f"Rows: learning rate, columns: weight decay λ, both in grid order (log-spaced grids read as log axes); "
        f"each cell is the mean over seeds. One colour scale for all methods, from {vmin:.3g} to {vmax:.3g} "
        f"(the 75th percentile of all cells; worse cells take the darkest colour). Red outline: best cell; "
        f"dotted outline: the rest of the good region (within δ of the best); grey: no run; 'div': a seed diverged. "
        f"The x label states the λ convention of the runs."
    )
    body = [
        ("summary", "Methods", summary_html),
        ("heatmaps", "lr × λ heatmaps",
         prose_html(heat_text) + '\n<div class="figures">\n' + "\n".join(map(figure_html, heatmaps)) + "\n</div>"),
        ("definitions", "How the shape of the good region is scored",
         definitions_html(SEPARABILITY_TEXT.format(delta=f"{delta:g}"))),
    ]
    if curve_figures:
        body.append(("curves", "Curves of the best configurations",
                     '<div class="figures">\n' + "\n".join(map(figure_html, curve_figures)) + "\n</div>"))
    for section, key, figs in extra:
        inner = prose_html(section.prose)
        if figs:
            inner += '\n<div class="figures">\n' + "\n".join(map(figure_html, figs)) + "\n</div>"
        if section.table:
            cols = list(section.table[0])
            inner += "\n" + table_html(cols, [[r.get(c, "") for c in cols] for r in section.table])
        body.append((f"section-{key}", section.title, inner))
    versions = data.spec_versions or [(1, data.spec)]
    if len(versions) == 1:
        spec = versions[0][1] or "(the store has no spec text for this sweep)"
        body.append(("spec", "Sweep spec", f"<pre>{escape(spec)}</pre>"))
    else:  # the sweep ran with several spec texts: each run keeps the label of the one it ran with
        parts = [f"<h3>Version {v}{' (latest)' if k == len(versions) - 1 else ''}</h3>\n<pre>{escape(text)}</pre>"
                 for k, (v, text) in enumerate(versions)]
        intro = prose_html(f"This sweep was run with {len(versions)} versions of its spec; every run keeps the "
                           "label of the version it was run with.")
        body.append(("spec", "Sweep spec", intro + "\n" + "\n".join(parts)))
    return page(f"decaylab report: {data.name}", meta, body)

