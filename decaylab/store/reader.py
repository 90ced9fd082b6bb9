r"""Read a sweep's finished runs from the run store with plain :mod:`sqlite3`: what the report,
``decaylab advise --from-store`` and the reproductions read.

A reader needs neither :mod:`decaylab.sweep` nor :mod:`decaylab.train` (nor torch), only the store's
schema (:mod:`decaylab.store.schema`, the contract between the writer and the readers)::

    runs   (id, sweep, key, config JSON, label, status, final JSON, error, started, finished)
    curves (run_id, step, metric, value)
    sweeps (name, spec, created)

The store is opened read-only, so a report can be drawn while a sweep is still writing to it, and a
file that is not a store (:func:`decaylab.store.schema.check_schema`) is refused unchanged. A run
that diverged (its loss not finite) has every final metric ``None``, as the writer's
:meth:`~decaylab.store.Store.runs` gives it too (:func:`decaylab.store.schema.decode_final`): the
heatmaps mark its cell ``div``.

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

from .schema import (
    PER_MODEL_BEFORE_V3,
    SCHEMA,
    STATUSES,
    NotAStoreError,
    check_schema,
    decode_config,
    decode_final,
)

__all__ = ["SCHEMA", "Run", "SweepData", "load_sweep", "load_curves", "sweep_names"]


@dataclass(frozen=True)
class Run:
    """One finished run: its store id, method label, config and final metrics (both decoded JSON), and
    why it diverged (None if it did not; then every metric in ``final`` is None)."""

    id: int
    label: str
    config: dict[str, Any]
    final: dict[str, Any]
    diverged: str | None = None


@dataclass
class SweepData:
    """What the report knows about one sweep.

    ``runs`` holds the runs with status ``done``; ``status_counts`` counts every run of the sweep by
    status (per method label in ``label_counts``); ``spec`` is the sweep's spec text ("" if the
    ``sweeps`` table has no row for it); ``per_model`` the config fields that vary within a stacked
    group (the sweep's record in ``sweep_meta``; for a store from before it was kept, what they were then).
    """

    store_path: str
    name: str
    spec: str
    created: float | None
    runs: list[Run]
    status_counts: dict[str, int]
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    first_error: str | None = None
    spec_versions: list[tuple[int, str]] = field(default_factory=list)  # (version, text): every spec it ran with
    per_model: tuple[str, ...] = PER_MODEL_BEFORE_V3  # config fields that vary within a stacked group

    @property
    def diverged(self) -> int:
        """How many finished runs diverged."""
        return sum(run.diverged is not None for run in self.runs)


def _connect(store_path: str | os.PathLike) -> sqlite3.Connection:
    path = Path(store_path)
    where = repr(os.fspath(store_path))
    if not path.is_file():
        raise FileNotFoundError(
            f"run store not found: {os.fspath(store_path)!r} (give the path of a sweep's store file)"
        )
    if path.stat().st_size == 0:
        raise NotAStoreError(f"{where} is not a decaylab store: it is an empty file (0 bytes)")
    # Read-only: never create a file or change a store that a sweep may be writing.
    db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        check_schema(db, where)
    except BaseException:
        db.close()
        raise
    return db


def _tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


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
        tables = _tables(db)
        per_model = PER_MODEL_BEFORE_V3
        if "sweep_meta" in tables:
            row = db.execute("SELECT value FROM sweep_meta WHERE sweep = ? AND name = 'per_model'", (sweep,)).fetchone()
            if row is not None:
                per_model = tuple(json.loads(row[0]))
        versions = []
        if "spec_versions" in tables:
            versions = db.execute("SELECT version, spec FROM spec_versions WHERE sweep = ? ORDER BY version",
                                  (sweep,)).fetchall()

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

        meta = ("m.diverged", " LEFT JOIN run_meta m ON m.run_id = r.id") if "run_meta" in tables else ("NULL", "")
        runs = [
            _run(run_id, label, config, final, diverged)
            for run_id, label, config, final, diverged in db.execute(
                f"SELECT r.id, r.label, r.config, r.final, {meta[0]} FROM runs r{meta[1]} "
                "WHERE r.sweep = ? AND r.status = 'done' ORDER BY r.id", (sweep,)
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
        spec_versions=[(int(v), text) for v, text in versions] or ([(1, spec)] if spec else []),
        per_model=per_model,
    )


def _run(run_id: int, label: str, config: str, final: str | None, diverged: str | None) -> Run:
    """A finished run, decoded as every reader decodes it (:func:`~decaylab.store.schema.decode_final`)."""
    final_dict, diverged = decode_final(final, diverged, run_id)
    return Run(id=run_id, label=label, config=decode_config(config, run_id), final=final_dict or {},
               diverged=diverged)


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
