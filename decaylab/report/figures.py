r"""The report's figures, drawn with matplotlib's object API on the Agg canvas.

No pyplot: drawing a report changes neither the caller's backend nor its open figures, and every
figure is drawn under matplotlib's default style (whatever the caller's rcParams), so the same store
gives the same PNG bytes. :func:`png_bytes` saves at :data:`DPI` without the software tag.
"""
from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from .analysis import MethodGrid, good_region

__all__ = ["DPI", "png_bytes", "heatmap_figure", "curves_figure", "color_range", "format_number", "SCALE_TEXT"]

DPI = 120
MISSING = "#d9d9d9"    # cells no run filled
DIVERGED = "#262626"   # cells where a seed diverged
BEST = "#e8000b"       # outline of the best cell

#: How a λ on the heatmap's axis acts per step, by decay_scale (see decaylab.optim.rules).
SCALE_TEXT = {
    "lr": "torch convention: decay lr_t·λ per step",
    "schedule": "paper convention: decay η_t·λ per step",
    "corrected": "AdamC convention: decay lr_t²/lr_max·λ per step",
    "constant": "decay λ per step",
}


def _matplotlib():
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("decaylab's report draws with matplotlib: pip install 'matplotlib>=3.7'") from None
    return matplotlib


@contextmanager
def _style() -> Iterator[None]:
    mpl = _matplotlib()
    with mpl.rc_context():
        mpl.rcdefaults()
        mpl.rcParams.update({"font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8, "svg.hashsalt": "decaylab"})
        yield


def png_bytes(figure: Any) -> bytes:
    """A matplotlib figure as PNG bytes (:data:`DPI` dots per inch, no software tag)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def format_number(value: float) -> str:
    """A compact grid value: ``0``, ``1e-3``, ``3e-4``, ``2.5e-5``, ``0.5`` → ``5e-1``, ``2``.

    >>> [format_number(v) for v in (0, 1e-3, 3e-4, 2.5e-5, 0.5, 2.0, 10.0)]
    ['0', '1e-3', '3e-4', '2.5e-5', '5e-1', '2', '1e1']
    """
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return mantissa if int(exponent) == 0 else f"{mantissa}e{int(exponent)}"


def _display(metric: str, values: np.ndarray) -> np.ndarray:
    return values * 100.0 if metric.endswith("_error") else values


def metric_title(metric: str) -> str:
    if metric.endswith("_error"):
        return {"val_error": "validation error (%)"}.get(metric, metric.replace("_", " ") + " (%)")
    return metric.replace("_", " ")


def color_range(grids: Sequence[MethodGrid], metric: str) -> tuple[float, float, bool]:
    """The shared colour scale of all heatmaps, in display units: from the best cell of any method to
    the 75th percentile of all finite cells (worse cells take the end colour, so the good regions
    get the whole range). Returns ``(vmin, vmax, clipped)``."""
    values = np.concatenate([_display(metric, g.error[np.isfinite(g.error)]) for g in grids] or [np.zeros(0)])
    if values.size == 0:
        return 0.0, 1.0, False
    vmin = float(values.min())
    vmax = float(np.percentile(values, 75))
    if vmax <= vmin:
        vmax = float(values.max())
    if vmax <= vmin:
        vmax = vmin + (abs(vmin) * 0.01 or 1.0)
    return vmin, vmax, bool(values.max() > vmax) or bool(any(np.isinf(g.error).any() for g in grids))


def _axis_label(grid: MethodGrid) -> str:
    decay, scale = grid.config.get("decay"), grid.config.get("decay_scale")
    if decay == "l2":
        return "weight decay λ (L2: λ·w added to the gradient)"
    parts = [str(decay)] if decay else []
    if scale in SCALE_TEXT:
        parts.append(SCALE_TEXT[scale])
    elif scale:
        parts.append(f"decay_scale={scale}")
    return "weight decay λ" + (f" ({'; '.join(parts)})" if parts else "")


def heatmap_figure(
    grid: MethodGrid, metric: str, vmin: float, vmax: float, clipped: bool, delta: float,
    scores: dict[str, Any] | None = None,
) -> Any:
    """The lr × λ heatmap of one method (rows: lr ascending upward; columns: λ ascending rightward).

    Cells show the mean over seeds; missing cells are grey, diverged ones near-black with "div";
    the best cell has a red outline and the rest of the good region (within ``delta``) a dotted one.
    """
    mpl = _matplotlib()
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n_rows, n_cols = grid.error.shape
    with _style():
        figure = Figure(figsize=(max(4.6, 2.4 + 0.62 * n_cols), max(3.4, 1.7 + 0.42 * n_rows)), layout="constrained")
        ax = figure.add_subplot()
        shown = _display(metric, grid.error)
        cmap = mpl.colormaps["viridis_r"].with_extremes(bad=MISSING)
        norm = Normalize(vmin=vmin, vmax=vmax)
        data = np.ma.masked_invalid(np.where(np.isinf(shown), np.nan, shown))
        image = ax.imshow(data, origin="lower", cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        size = 8 if max(n_rows, n_cols) <= 6 else 7 if max(n_rows, n_cols) <= 9 else 6
        for i in range(n_rows):
            for j in range(n_cols):
                value = shown[i, j]
                if np.isnan(value):
                    continue
                if np.isinf(value):
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=DIVERGED, edgecolor="none"))
                    ax.text(j, i, "div", ha="center", va="center", color="white", fontsize=size)
                    continue
                red, green, blue, _ = cmap(norm(value))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                text = f"{value:.1f}" if metric.endswith("_error") else f"{value:.3g}"
                ax.text(j, i, text, ha="center", va="center", fontsize=size, color="white" if dark else "black")
        good = good_region(grid.error, delta)
        best = grid.best
        for i, j in zip(*np.nonzero(good), strict=True):
            if (i, j) != best:
                ax.add_patch(Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor="black",
                                       linewidth=1.0, linestyle=(0, (2, 1.5))))
        if best is not None:
            ax.add_patch(Rectangle((best[1] - 0.47, best[0] - 0.47), 0.94, 0.94, fill=False, edgecolor=BEST,
                                   linewidth=2.2))
        ax.set_xticks(range(n_cols), [format_number(v) for v in grid.weight_decays],
                      rotation=45 if n_cols > 6 else 0, ha="right" if n_cols > 6 else "center")
        ax.set_yticks(range(n_rows), [format_number(v) for v in grid.lrs])
        ax.set_xlabel(_axis_label(grid), fontsize=8)
        ax.set_ylabel("learning rate")
        title = grid.name
        if scores:
            parts = []
            if scores.get("separability") is not None:
                n = scores["good_cells"]
                parts.append(f"separability {scores['separability']:.2f} ({n} good cell{'' if n == 1 else 's'})")
            if scores.get("diagonal_slope") is not None:
                parts.append(f"slope {scores['diagonal_slope']:+.2f}")
            if parts:
                title += "\n" + " · ".join(parts)
        ax.set_title(title)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        bar = figure.colorbar(image, ax=ax, extend="max" if clipped else "neither", fraction=0.06, pad=0.03)
        bar.set_label(metric_title(metric) + ", mean over seeds")
    return figure


def _plain_log_formatter(**kwargs: Any) -> Any:
    """matplotlib's choice of which log ticks to label, written ``0.2`` rather than ``2×10⁻¹``."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:g}" if super().__call__(x, pos) else ""

    return PlainLogFormatter(**kwargs)


def curves_figure(
    series: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]]],
    panels: Sequence[tuple[str, str, bool]],
    title: str,
) -> Any:
    """Curves of several methods, one panel per metric.

    ``series[method][metric] = (steps, mean, std, seeds)``; ``panels`` lists ``(metric, y label,
    log y)``. Each method has one colour in every panel; a band of ±1 std over seeds where seeds > 1.
    """
    _matplotlib()
    from matplotlib.figure import Figure

    with _style():
        figure = Figure(figsize=(max(4.8, 4.0 * len(panels)), 3.6), layout="constrained")
        axes = figure.subplots(1, len(panels), squeeze=False)[0]
        handles = {}
        for ax, (metric, ylabel, log) in zip(axes, panels, strict=True):
            positive = True
            for k, (method, curves) in enumerate(series.items()):
                if metric not in curves:
                    continue
                steps, mean, std, seeds = curves[metric]
                color = f"C{k % 10}"
                (line,) = ax.plot(steps, mean, color=color, linewidth=1.5, label=method)
                handles.setdefault(method, line)
                if seeds > 1:
                    ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
                finite = mean[np.isfinite(mean)]
                positive = positive and finite.size > 0 and bool((finite > 0).all())
            if log and positive:
                ax.set_yscale("log")
                # plain numbers (0.2, 1, 2) rather than 2×10⁻¹ on a log axis
                ax.yaxis.set_major_formatter(_plain_log_formatter(labelOnlyBase=False))
                ax.yaxis.set_minor_formatter(_plain_log_formatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        if handles:
            figure.legend(list(handles.values()), list(handles), loc="outside lower center",
                          ncols=min(len(handles), 4), frameon=False)
        figure.suptitle(title)
    return figure


def mean_curve(curves: Sequence[Sequence[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Mean and std (ddof 0) over runs at each step any run recorded; non-finite values are gaps.

    >>> steps, mean, std, n = mean_curve([[(0, 1.0), (10, 0.5)], [(0, 3.0), (10, 0.5)]])
    >>> steps.tolist(), mean.tolist(), std.tolist(), n
    ([0, 10], [2.0, 0.5], [1.0, 0.0], 2)
    """
    steps = sorted({step for curve in curves for step, _ in curve})
    index = {step: k for k, step in enumerate(steps)}
    values = np.full((len(curves), len(steps)), np.nan)
    for r, curve in enumerate(curves):
        for step, value in curve:
            values[r, index[step]] = value if math.isfinite(value) else np.nan
    counts = np.isfinite(values).sum(axis=0)
    with np.errstate(invalid="ignore"):
        total = np.where(np.isfinite(values), values, 0.0).sum(axis=0)
        mean = np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
        var = np.where(np.isfinite(values), (values - mean) ** 2, 0.0).sum(axis=0) / np.maximum(counts, 1)
    return np.array(steps), mean, np.where(counts > 0, np.sqrt(var), np.nan), len(curves)
