r"""Figures and the HTML report of a sweep, drawn from the run store alone.

``build_report(store, sweep=None, out_dir=None)`` writes, per method (a label of the sweep spec), the
lr × λ heatmap of test error (the figure of the AdamW paper), and for each method's best cell the
learning curves, weight norm and effective learning rate; then one self-contained ``report.html``
(figures embedded, no external resource), ``summary.json`` and the PNGs. The table states per method
the best test accuracy (mean ± std over seeds), the best (lr, λ), and how axis-aligned the good region
is: ``separability``, ``diagonal_slope`` and ``additivity`` (defined in :mod:`decaylab.report.analysis`).

The command: ``decaylab report STORE [--sweep NAME] [--out DIR]``.
"""
from ..store import SCHEMA, Run, SweepData, load_curves, load_sweep, sweep_names
from .analysis import MethodGrid, additivity, build_grids, diagonal_slope, good_region, separability
from .build import DEFAULT_DELTA, SEPARABILITY_TEXT, ReportResult, Section, build_report, format_table

__all__ = [
    "build_report", "ReportResult", "Section", "format_table", "DEFAULT_DELTA", "SEPARABILITY_TEXT",
    "load_sweep", "load_curves", "sweep_names", "SweepData", "Run", "SCHEMA",
    "MethodGrid", "build_grids", "separability", "diagonal_slope", "additivity", "good_region",
]
