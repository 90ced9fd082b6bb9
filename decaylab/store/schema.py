"""The run store's schema: the contract between the writer (:mod:`decaylab.store.writer`, which
:mod:`decaylab.sweep` drives) and the readers (:mod:`decaylab.store.reader`, the report, status,
advise and the reproductions). Standard library only, so that the report can read a store without
importing the sweep engine or torch.

The contract tables are ``runs``, ``curves`` and ``sweeps``; ``leases`` (which process holds a
running run), ``spec_versions`` (every spec text a sweep was run with: version 1, 2, ...),
``run_meta`` (per run: the spec version that labelled it, how many times its process died, and
why it diverged) and ``sweep_meta`` (per sweep, JSON values by name: ``per_model``, the config fields
that vary within a stacked group, which the report reads instead of importing the config class)
were added later, so a store written before them lacks them; a writer adds them.
:func:`check_schema` is the one test of whether a SQLite file is a decaylab store.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
from typing import Any

STATUSES = ("pending", "running", "done", "failed")

#: ``PRAGMA user_version`` of a store this decaylab writes; a store with a larger one was written by
#: a newer decaylab and is refused (its tables may mean something else).
SCHEMA_VERSION = 3
#: ``PRAGMA application_id`` of a store created by this decaylab ("dclb"): a SQLite file with another
#: application id belongs to another program.
APPLICATION_ID = 0x64636C62

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
  id INTEGER PRIMARY KEY, sweep TEXT NOT NULL, key TEXT NOT NULL,
  config TEXT NOT NULL,
  label TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ({','.join(repr(s) for s in STATUSES)})),
  final TEXT,
  error TEXT, started REAL, finished REAL, UNIQUE (sweep, key));
CREATE TABLE IF NOT EXISTS curves (run_id INTEGER NOT NULL REFERENCES runs(id), step INTEGER NOT NULL,
  metric TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (run_id, step, metric));
CREATE TABLE IF NOT EXISTS sweeps (name TEXT PRIMARY KEY, spec TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (run_id INTEGER PRIMARY KEY REFERENCES runs(id), host TEXT NOT NULL,
  pid INTEGER NOT NULL, proc_start INTEGER, heartbeat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS spec_versions (sweep TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
  created REAL NOT NULL, PRIMARY KEY (sweep, version));
CREATE TABLE IF NOT EXISTS run_meta (run_id INTEGER PRIMARY KEY REFERENCES runs(id), spec_version INTEGER,
  deaths INTEGER NOT NULL DEFAULT 0, diverged TEXT);
CREATE TABLE IF NOT EXISTS sweep_meta (sweep TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (sweep, name));
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (sweep, status);
"""

#: Every table of a store and its columns, in order (what :func:`check_schema` compares against).
COLUMNS: dict[str, tuple[str, ...]] = {
    "runs": ("id", "sweep", "key", "config", "label", "status", "final", "error", "started", "finished"),
    "curves": ("run_id", "step", "metric", "value"),
    "sweeps": ("name", "spec", "created"),
    "leases": ("run_id", "host", "pid", "proc_start", "heartbeat"),
    "spec_versions": ("sweep", "version", "spec", "created"),
    "run_meta": ("run_id", "spec_version", "deaths", "diverged"),
    "sweep_meta": ("sweep", "name", "value"),
}
#: The tables every store has (the contract); the others are added by a writer when missing.
CORE_TABLES = ("runs", "curves", "sweeps")
#: The config fields that vary within a stacked group of a sweep whose store does not record them
#: (``sweep_meta.per_model``, written since schema version 3): what decaylab's TrainConfig had then.
PER_MODEL_BEFORE_V3 = ("lr", "weight_decay", "seed")


class NotAStoreError(ValueError):
    """A file that is not a decaylab store (empty, not SQLite, another program's database, or a
    store of a newer decaylab); the message names the file and what is wrong with it."""


def check_schema(conn: sqlite3.Connection, where: str, *, empty_ok: bool = False) -> bool:
    """Check that ``conn`` holds a decaylab store (``where`` names the file in messages); returns
    False for an empty database (no tables, no other program's marks) when ``empty_ok``, else True.

    Reads only. Raises :class:`NotAStoreError` for anything else: an unreadable or non-SQLite
    file, a database with tables of other shapes or names, another program's application id, or a
    store written by a newer decaylab.
    """
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        shapes = {t: tuple(row[1] for row in conn.execute(f"PRAGMA table_info({t})")) for t in tables
                  if t in COLUMNS}
    except sqlite3.DatabaseError as error:
        if "not a database" not in str(error) and "encrypted" not in str(error):
            raise  # an I/O error, a lock, a damaged file: the caller says what (describe_error)
        raise NotAStoreError(f"{where} is not a decaylab store (not an SQLite database: {error})") from None
    if app_id not in (0, APPLICATION_ID):
        raise NotAStoreError(f"{where} is not a decaylab store: it is another program's SQLite database "
                             f"(application id {app_id:#x})")
    if version > SCHEMA_VERSION:
        raise NotAStoreError(f"{where} was written by a newer decaylab (store schema version {version}; this one "
                             f"knows up to {SCHEMA_VERSION}): upgrade decaylab to read or write it")
    tables -= {t for t in tables if t.startswith("sqlite_")}  # SQLite's own (sqlite_stat1, ...)
    if not tables:
        if empty_ok and version == 0:
            return False
        raise NotAStoreError(f"{where} is not a decaylab store: it is an empty database (no tables); "
                             "`decaylab sweep SPEC --store PATH` creates a store")
    problems = [f"its table {t!r} has columns {list(shape)}, expected {list(COLUMNS[t])}"
                for t, shape in sorted(shapes.items()) if shape != COLUMNS[t]]
    foreign = sorted(tables - set(COLUMNS))
    if foreign:
        problems.append(f"it has table(s) {', '.join(foreign)} that a store does not have")
    missing = [t for t in CORE_TABLES if t not in tables]
    if missing:
        problems.append(f"it lacks the table(s) {', '.join(missing)} (a store has the tables runs, curves and "
                        "sweeps written by decaylab.sweep)")
    if problems:
        raise NotAStoreError(f"{where} is not a decaylab store: " + "; ".join(problems))
    return True


def describe_error(path: str | os.PathLike[str], error: sqlite3.Error) -> str:
    """One line about an SQLite error on the store ``path``, with what to do about it."""
    text = str(error)
    lower = text.lower()
    if "malformed" in lower or "not a database" in lower:
        advice = "the file is damaged; restore it from a copy, or sweep into a new store"
    elif "readonly" in lower or "read-only" in lower:
        advice = "a sweep writes the store: check the permissions of the file and its folder"
    elif "full" in lower:
        advice = "free some space and run the same command again"
    elif "unable to open" in lower or "i/o" in lower:
        advice = "check the disk, and that the folder can be written (SQLite keeps -wal and -shm files beside it)"
    elif "locked" in lower or "busy" in lower:
        advice = "another process holds the store locked for too long; try again"
    else:
        advice = "see the SQLite documentation of this error"
    return f"store {os.fspath(path)!r}: SQLite says {text!r}: {advice}"


# ---------------------------------------------------------------------------------------------- metrics


def finite_or_none(value: Any) -> Any:
    """A number as JSON can hold it: non-finite floats (a diverged run's loss) become None (``null``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float, at any depth of dicts, lists and tuples, as None: every JSON
    decaylab writes is valid JSON (no bare ``NaN`` or ``Infinity`` tokens)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return finite_or_none(value)


def divergence(final: dict[str, Any]) -> str | None:
    """Why a run with these final metrics diverged, or None if it did not.

    A run diverged when a loss (a metric named ``*loss``) or ``weight_norm`` is not finite (NaN,
    ±inf, or null as the store writes them). Its other numbers then mean nothing (the accuracy of
    NaN logits is the frequency of class 0), so the store keeps every metric of a diverged run as
    null and records this reason.

    >>> divergence({"test_loss": float("nan"), "test_acc": 0.102}), divergence({"test_loss": 0.3})
    ('test_loss is nan', None)
    """
    for name, value in final.items():
        if not (str(name).endswith("loss") or name == "weight_norm"):
            continue
        if value is None:
            return f"{name} is not finite"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
            return f"{name} is {value}"
    return None


def decode_json(text: str | None, what: str, run_id: int) -> Any:
    """A JSON column of run ``run_id`` (``what``: its name, for the message), or ``ValueError`` naming the run."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as error:
        raise ValueError(f"run {run_id}: its {what} in the store is not valid JSON ({error})") from None


def decode_config(text: str | None, run_id: int) -> dict[str, Any]:
    """A run's stored config (a JSON object), or ``ValueError`` naming the run."""
    config = decode_json(text, "config", run_id)
    if not isinstance(config, dict):
        raise ValueError(f"run {run_id}: its config in the store must be a JSON object, got {type(config).__name__}")
    return config


def decode_final(text: str | None, diverged: str | None, run_id: int) -> tuple[dict[str, Any] | None, str | None]:
    """A run's final metrics as every reader sees them, and why it diverged (None if it did not).

    The one decoding of a stored run: ``None`` while the run has no result; a diverged run (recorded in
    ``run_meta``, or a loss stored as null by a store from before divergence was recorded) has every
    metric ``None``, as the JSON holds it, never NaN or inf: a number that means nothing is absent.

    >>> decode_final('{"test_acc": 0.9, "test_loss": 0.3}', None, 1)
    ({'test_acc': 0.9, 'test_loss': 0.3}, None)
    >>> decode_final('{"test_acc": 0.102, "test_loss": null}', None, 2)
    ({'test_acc': None, 'test_loss': None}, 'test_loss is not finite')
    """
    if text is None or text == "":
        return None, diverged
    final = decode_json(text, "final", run_id)
    if not isinstance(final, dict):
        raise ValueError(f"run {run_id}: its final in the store must be a JSON object, got {type(final).__name__}")
    diverged = diverged or divergence(final)
    if diverged:
        final = dict.fromkeys(final)
    return final, diverged
