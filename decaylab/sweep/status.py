"""A store's progress as a table: per sweep and method, how many runs are done, running, pending and
failed, the best result so far, the elapsed time and an ETA (``decaylab status STORE``).

The ETA divides the runs left by the recent rate: runs finished in the last ten minutes of the
sweep's activity (or since it started), so idle gaps between invocations do not slow the estimate.
It assumes the sweep keeps running as it did; ``(idle)`` marks a sweep with no run in progress.
The elapsed time of a sweep (or method) with no run in progress ends at its last finished run (done
or failed), so it stops growing once the sweep stops.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from ..store import STATUSES, Store

__all__ = ["status_rows", "format_status", "format_duration"]

RATE_WINDOW_S = 600.0
# metric, better when: the first a run records selects its best (validation first; a store from before runs
# recorded it selects on test, as its status always did)
BEST_METRICS = (("val_acc", max), ("val_loss", min), ("test_acc", max), ("test_loss", min))


def format_duration(seconds: float | None) -> str:
    """``45s``, ``3m12s``, ``2h05m``; ``-`` for None.

    >>> format_duration(45.2), format_duration(192), format_duration(7500), format_duration(None)
    ('45s', '3m12s', '2h05m', '-')
    """
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class _Row:
    sweep: str
    label: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    started: list[float] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)  # of done runs
    ended: list[float] = field(default_factory=list)  # of done and failed runs
    best: tuple[str, float, dict] | None = None  # metric, value, config
    diverged: int = 0

    active: int = 0  # running runs whose process is alive

    def add(self, run: dict[str, Any], stale: set[int]) -> None:
        self.counts[run["status"]] += 1
        if run["status"] == "running" and run["id"] not in stale:
            self.active += 1
        if run["started"] is not None:
            self.started.append(run["started"])
        if run["status"] in ("done", "failed") and run["finished"] is not None:
            self.ended.append(run["finished"])
        if run["status"] != "done":
            return
        if run["finished"] is not None:
            self.finished.append(run["finished"])
        if run.get("diverged"):
            self.diverged += 1
        final = run["final"] or {}
        for metric, better in BEST_METRICS:
            value = final.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                if self.best is None or (self.best[0] == metric and better(value, self.best[1]) == value
                                         and value != self.best[1]):
                    self.best = (metric, float(value), run["config"])
                break


def _rate(finished: list[float], first_start: float | None) -> float | None:
    """Runs per second over the last RATE_WINDOW_S of activity."""
    if not finished or first_start is None:
        return None
    last = max(finished)
    since = max(last - RATE_WINDOW_S, first_start)
    recent = sum(1 for t in finished if t >= since)
    span = last - since
    return recent / span if span > 0 else None


def status_rows(store: Store, sweep: str | None = None, *, now: float | None = None) -> list[dict[str, Any]]:
    """One dict per (sweep, method label) and one per sweep (label ``None``): ``sweep``, ``label``,
    the four status counts, ``total``, ``diverged`` (done runs whose loss was not finite), ``best``
    (metric, value, config) or None, ``elapsed_s`` (from the first start to now while a run is in
    progress, else to the last finished run) and ``eta_s`` (None when unknown or nothing is left),
    ``idle`` (runs are left but no live process is training any: running runs whose process is
    gone do not count)."""
    now = time.time() if now is None else now
    rows: dict[tuple[str, str | None], _Row] = {}
    stale = set(store.stale(sweep))
    for run in store.runs(sweep):
        for label in (run["label"], None):
            row = rows.setdefault((run["sweep"], label), _Row(run["sweep"], label))
            row.add(run, stale)
    out = []
    for (name, label), row in rows.items():
        whole = rows[(name, None)]
        first = min(whole.started) if whole.started else None
        rate = _rate(whole.finished, first)  # the sweep's rate: its methods share the machine
        left = row.counts["pending"] + row.counts["running"]
        mine_first = min(row.started) if row.started else None
        if mine_first is None:
            elapsed = None
        elif row.active:
            elapsed = now - mine_first
        else:  # nothing in progress: the time up to the last run that ended (it no longer grows)
            elapsed = max(row.ended) - mine_first if row.ended else None
        out.append({"sweep": name, "label": label, **row.counts, "total": sum(row.counts.values()),
                    "diverged": row.diverged, "best": row.best, "elapsed_s": elapsed,
                    "eta_s": (left / rate if rate else None) if left else None,
                    "idle": left > 0 and whole.active == 0})
    out.sort(key=lambda r: (r["sweep"], r["label"] is None))  # stable: methods in first-run order
    return out


def _best_text(best: tuple[str, float, dict] | None) -> str:
    if best is None:
        return "-"
    metric, value, config = best
    where = ", ".join(f"{name} {config[name]:.3g}" for name in ("lr", "weight_decay") if name in config
                      and isinstance(config[name], (int, float)))
    where = where.replace("weight_decay", "λ")
    return f"{metric} {value:.4f}" + (f" ({where})" if where else "")


def format_status(store: Store, sweep: str | None = None, *, now: float | None = None) -> str:
    """The progress table of a store (every sweep, or one), as text."""
    rows = status_rows(store, sweep, now=now)
    if not rows:
        which = f"sweep {sweep!r}" if sweep else "any sweep"
        return f"{store.path}: no runs of {which}"
    header = ("sweep", "method", "done", "running", "pending", "failed", "best so far", "elapsed", "ETA")
    table = [header]
    for r in rows:
        eta = format_duration(r["eta_s"]) if r["eta_s"] is not None else ("-" if not r["pending"] + r["running"]
                                                                          else "?")
        if r["label"] is None and r["idle"]:
            eta += " (idle)"
        table.append((r["sweep"], r["label"] if r["label"] is not None else "(all)",
                      f"{r['done']}/{r['total']}", str(r["running"]), str(r["pending"]), str(r["failed"]),
                      _best_text(r["best"]), format_duration(r["elapsed_s"]), eta))
    numeric = {2, 3, 4, 5, 7, 8}
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    stale = len(store.stale(sweep))
    for n, row in enumerate(table):
        cells = [cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if stale:
        lines.append(f"{stale} of the running runs were left by a process that is gone; the next "
                     "`decaylab sweep` of their spec trains them again.")
    diverged = sum(r["diverged"] for r in rows if r["label"] is None)
    if diverged:
        lines.append(f"{diverged} of the done runs diverged (a loss that is not finite): their metrics are null, "
                     "and the report marks their cells 'div'.")
    return "\n".join(lines)
