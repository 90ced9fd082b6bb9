r"""Read a sweep's runs from the run store with plain :mod:`sqlite3`.

The report reads only the store: it needs neither :mod:`decaylab.sweep` nor :mod:`decaylab.train`,
only the store's schema (the contract between the three)::

    runs   (id, sweep, key, config JSON, label, status, final JSON, error, started, finished)
    curves (run_id, step, metric, value)
    sweeps (name, spec, created)

The store is opened read-only, so a report can be drawn while a sweep is still writing to it.

>>> import json, os, sqlite3, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "store.db")
>>> db = sqlite3.connect(path)
>>> db.executescript(SCHEMA)  # doctest: +ELLIPSIS
<sqlite3.Cursor object at ...>
>>> _ = db.execute("INSERT INTO sweeps VALUES ('demo', 'lr = [1e-3]', 0.0)")
>>> _ = db.execute("INSERT INTO runs (sweep, key, config, label, status, final) VALUES (?, ?, ?, ?, ?, ?)",
...                ("demo", "k0", json.dumps({"lr": 1e-3, "weight_decay": 0.1, "seed": 0}), "AdamW", "done",
...                 json.dumps({"test_acc": 0.9, "test_loss": 0.3})))
>>> db.commit(); db.close()
>>> data = load_sweep(path)
>>> data.name, len(data.runs), data.runs[0].label, data.runs[0].final["test_acc"]
('demo', 1, 'AdamW', 0.9)
>>> load_sweep(path, "other")
Traceback (most recent call last):
...
ValueError: sweep 'other' is not in the store ...; available sweeps: demo
"""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decaylab._store_schema import SCHEMA, STATUSES

__all__ = ["SCHEMA", "Run", "SweepData", "load_sweep", "load_curves", "sweep_names"]

# Columns the report reads; a table missing one of them is not a decaylab store.
_REQUIRED = {
    "runs": {"id", "sweep", "config", "label", "status", "final", "error"},
    "curves": {"run_id", "step", "metric", "value"},
    "sweeps": {"name", "spec", "created"},
}


@dataclass(frozen=True)
class Run:
    """One finished run: its store id, method label, config and final metrics (both decoded JSON)."""

    id: int
    label: str
    config: dict[str, Any]
    final: dict[str, Any]


@dataclass
class SweepData:
    """What the report knows about one sweep.

    ``runs`` holds the runs with status ``done``; ``status_counts`` counts every run of the sweep by
    status (per method label in ``label_counts``); ``spec`` is the sweep's spec text ("" if the
    ``sweeps`` table has no row for it).
    """

    store_path: str
    name: str
    spec: str
    created: float | None
    runs: list[Run]
    status_counts: dict[str, int]
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    first_error: str | None = None


def _connect(store_path: str | os.PathLike) -> sqlite3.Connection:
    path = Path(store_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"run store not found: {os.fspath(store_path)!r} (give the path of a sweep's store file)"
        )
    # Read-only: never create a file or change a store that a sweep may be writing.
    db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as error:
        db.close()
        raise ValueError(
            f"{os.fspath(store_path)!r} is not a decaylab run store (not an SQLite database: {error})"
        ) from None
    missing = sorted(set(_REQUIRED) - tables)
    if missing:
        db.close()
        raise ValueError(
            f"{os.fspath(store_path)!r} is not a decaylab run store: it lacks the table(s) {', '.join(missing)} "
            f"(a store has the tables runs, curves and sweeps written by decaylab.sweep)"
        )
    for table, columns in _REQUIRED.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not columns <= have:
            db.close()
            raise ValueError(
                f"{os.fspath(store_path)!r} is not a decaylab run store: table {table} lacks the column(s) "
                f"{', '.join(sorted(columns - have))}"
            )
    return db


def sweep_names(store_path: str | os.PathLike) -> list[str]:
    """The names of the sweeps in a store (from the ``sweeps`` table and the runs), sorted."""
    db = _connect(store_path)
    try:
        return _names(db)
    finally:
        db.close()


def _names(db: sqlite3.Connection) -> list[str]:
    names = {row[0] for row in db.execute("SELECT name FROM sweeps")}
    names |= {row[0] for row in db.execute("SELECT DISTINCT sweep FROM runs")}
    return sorted(names)


def _decode(text: str | None, what: str, run_id: int) -> dict[str, Any]:
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"run {run_id}: its {what} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"run {run_id}: its {what} must be a JSON object, got {type(value).__name__}")
    return value


def load_sweep(store_path: str | os.PathLike, sweep: str | None = None) -> SweepData:
    """Read one sweep's finished runs.

    ``sweep=None`` picks the store's only sweep; a store with several needs a name. Raises
    :class:`FileNotFoundError` for a missing file and :class:`ValueError` for a file that is not a
    store, an unknown sweep name (the message lists the available ones) or a sweep with no finished run.
    """
    db = _connect(store_path)
    try:
        names = _names(db)
        if not names:
            raise ValueError(f"the store {os.fspath(store_path)!r} holds no sweep yet")
        if sweep is None:
            if len(names) > 1:
                raise ValueError(
                    f"the store {os.fspath(store_path)!r} holds {len(names)} sweeps; choose one with sweep= "
                    f"(--sweep NAME): {', '.join(names)}"
                )
            sweep = names[0]
        elif sweep not in names:
            raise ValueError(
                f"sweep {sweep!r} is not in the store {os.fspath(store_path)!r}; available sweeps: {', '.join(names)}"
            )
        row = db.execute("SELECT spec, created FROM sweeps WHERE name = ?", (sweep,)).fetchone()
        spec, created = (row[0], row[1]) if row else ("", None)

        counts = dict.fromkeys(STATUSES, 0)
        label_counts: dict[str, dict[str, int]] = {}
        for label, status, n in db.execute(
            "SELECT label, status, COUNT(*) FROM runs WHERE sweep = ? GROUP BY label, status", (sweep,)
        ):
            counts[status] = counts.get(status, 0) + n
            label_counts.setdefault(label, dict.fromkeys(STATUSES, 0))[status] = n
        error_row = db.execute(
            "SELECT error FROM runs WHERE sweep = ? AND status = 'failed' AND error IS NOT NULL ORDER BY id LIMIT 1",
            (sweep,),
        ).fetchone()
        first_error = error_row[0] if error_row else None

        runs = [
            Run(id=run_id, label=label, config=_decode(config, "config", run_id), final=_decode(final, "final", run_id))
            for run_id, label, config, final in db.execute(
                "SELECT id, label, config, final FROM runs WHERE sweep = ? AND status = 'done' ORDER BY id", (sweep,)
            )
        ]
    finally:
        db.close()
    if not runs:
        summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "no runs at all"
        message = f"sweep {sweep!r} has no finished runs yet ({summary})"
        if first_error:
            message += f"; the first failure says: {first_error.strip().splitlines()[-1]}"
        raise ValueError(message)
    return SweepData(
        store_path=os.fspath(store_path), name=sweep, spec=spec, created=created, runs=runs,
        status_counts=counts, label_counts=label_counts, first_error=first_error,
    )


def load_curves(store_path: str | os.PathLike, run_ids: list[int]) -> dict[int, dict[str, list[tuple[int, float]]]]:
    """The curves of some runs: ``{run_id: {metric: [(step, value), ...] sorted by step}}``."""
    out: dict[int, dict[str, list[tuple[int, float]]]] = {run_id: {} for run_id in run_ids}
    if not run_ids:
        return out
    db = _connect(store_path)
    try:
        marks = ",".join("?" * len(run_ids))
        for run_id, step, metric, value in db.execute(
            f"SELECT run_id, step, metric, value FROM curves WHERE run_id IN ({marks}) ORDER BY run_id, metric, step",
            list(run_ids),
        ):
            out[run_id].setdefault(metric, []).append((int(step), float(value)))
    finally:
        db.close()
    return out
