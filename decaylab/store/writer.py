r"""The run store: one SQLite file (WAL) with every run's config, status, curves and final metrics.

Schema (``decaylab.report`` reads it; binding)::

    runs    (id, sweep, key, config, label, status, final, error, started, finished)  UNIQUE (sweep, key)
    curves  (run_id, step, metric, value)                                          PRIMARY KEY (run_id, step, metric)
    sweeps  (name, spec, created)

``config`` is the JSON of ``TrainConfig.to_dict()``, ``final`` the JSON of ``RunResult.final``,
``status`` one of ``pending``, ``running``, ``done``, ``failed``; times are Unix seconds. Metric
values that are not finite (a diverged run's loss) are written as JSON ``null`` in ``final`` and
read back as ``None`` (:func:`decaylab.store.schema.decode_final`, the one decoding every reader
uses); in ``curves`` they are left out (SQLite stores NaN as NULL).

A fourth table, ``leases (run_id, host, pid, proc_start, heartbeat)``, records which process
holds each ``running`` run, so that a process that died (killed, crashed, power cut) does not
leave its runs ``running`` for ever: :meth:`Store.requeue_stale` puts them back to ``pending``.
The policy: a run held by a process **on this host** whose pid is gone (or now belongs to another
process, or is a zombie) is stale at once; a run held **on another host** is stale when its
heartbeat is older than ``stale_after`` seconds (a live runner beats every 30 s). A run whose
process died ``max_deaths`` times (3 by default) is marked ``failed`` with that reason instead: a
run that kills its process (the out-of-memory killer) would otherwise be trained again for ever.

``spec_versions (sweep, version, spec, created)`` keeps every spec text a sweep was registered
with (``sweeps.spec`` is the latest), and ``run_meta (run_id, spec_version, deaths, diverged)``
holds per run the spec version that labelled it, how many times its process died, and why it
diverged (a run whose loss is not finite is stored ``done`` with every metric null and this
reason; :func:`decaylab.store.schema.divergence`). A store written before these tables gets
them from the first writer that opens it.

Only a writer that may create a store (``Store(path)``, what ``decaylab sweep`` opens) creates
one, and only at a path that does not exist or is an empty file; any other file must already be a
decaylab store (:func:`decaylab.store.schema.check_schema`), checked before anything is written.
``Store(path, readonly=True)`` (``decaylab status``) opens the file read-only and never changes it.

Concurrency: every write is one short ``BEGIN IMMEDIATE`` transaction, so two processes (or
two hosts on a filesystem with working locks; not NFS) can sweep one store at once: :meth:`claim`
hands each a disjoint set of runs, and a run's final metrics, curves and ``done`` status are
written together or not at all (:meth:`finish`).
"""
from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .schema import (
    APPLICATION_ID,
    COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    STATUSES,
    NotAStoreError,
    check_schema,
    decode_config,
    decode_final,
    describe_error,
    divergence,
    finite_or_none,
)

__all__ = ["Store", "SCHEMA", "STATUSES", "SpecConflictError", "NotAStoreError", "is_transient", "describe_error"]

RUNS_COLUMNS = COLUMNS["runs"]
BUSY_TIMEOUT_S = 60.0
STALE_AFTER_S = 600.0
MAX_DEATHS = 3


class SpecConflictError(ValueError):
    """A spec that labels runs the store already holds under another label (a renamed method)."""


def is_transient(error: BaseException) -> bool:
    """Whether a failed store write may succeed if tried again: a full disk, an I/O error, a lock
    held too long; not a bad value or a damaged file."""
    if isinstance(error, sqlite3.OperationalError):
        text = str(error).lower()
        return any(word in text for word in ("full", "disk i/o", "locked", "unable to open", "busy"))
    return isinstance(error, OSError)


def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    try:
        return int(text.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, proc_start: int | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process on this host, and the same one that had
    start time ``proc_start`` when that is known (a reused pid is another process)."""
    if pid <= 0:
        return False
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields_ = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return False
        if fields_[0] in ("Z", "X", "x"):
            return False
        return proc_start is None or _process_start(pid) == proc_start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _retry_locked(action: Callable[[], Any], timeout: float) -> Any:
    """Run ``action``, retrying while SQLite says the database is locked (switching a fresh file to
    WAL needs a moment when no one else holds it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _encode_final(final: dict[str, Any]) -> tuple[str, str | None]:
    """The JSON of a run's final metrics and, for a diverged run, why: then every metric is null."""
    if not isinstance(final, dict):
        raise TypeError(f"RunResult.final must be a dict of metric -> number, got {type(final).__name__}")
    plain = {str(k): _plain(v) for k, v in final.items()}
    reason = divergence(plain)
    values = {k: None if reason else finite_or_none(v) for k, v in plain.items()}
    return json.dumps(values, allow_nan=False, sort_keys=True), reason


def _plain(value: Any) -> Any:
    """Numbers from numpy / torch scalars as Python numbers."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            return value
    return value


def _curve_rows(run_id: int, curves: Sequence[dict[str, Any]]) -> list[tuple[int, int, str, float]]:
    """(run_id, step, metric, value) rows; checks every point before anything is written."""
    rows = []
    for i, point in enumerate(curves or []):
        if not isinstance(point, dict) or "step" not in point:
            raise ValueError(f"curves[{i}] must be a dict with a 'step', got {point!r}")
        step = _plain(point["step"])
        if isinstance(step, bool) or not isinstance(step, int):
            if isinstance(step, float) and step.is_integer():
                step = int(step)
            else:
                raise ValueError(f"curves[{i}]['step'] must be an integer, got {step!r}")
        for metric, value in point.items():
            if metric == "step":
                continue
            value = _plain(value)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"curves[{i}][{metric!r}] must be a number, got {value!r}")
            if not math.isfinite(value):
                continue  # SQLite would store NaN as NULL; a missing point reads as "not finite"
            rows.append((run_id, step, str(metric), float(value)))
    return rows


class Store:
    """A sweep store: one SQLite file in WAL mode, shared safely by several processes.

    ``Store(path)`` creates the file and its tables if needed, at a path that does not exist or is
    an empty file (``create=False``: the file must exist); any other file must be a decaylab store
    already, or :class:`NotAStoreError` is raised before anything is written.
    ``Store(path, readonly=True)`` opens an existing store read-only (for readers such as
    ``decaylab status``: nothing is ever written, not even the WAL switch).
    Reading: :meth:`runs`, :meth:`curves`, :meth:`sweeps`, :meth:`spec_versions`. Writing (the
    runner's side): :meth:`register`, :meth:`claim`, :meth:`finish`, :meth:`fail`, :meth:`release`,
    :meth:`requeue_stale`, :meth:`died`, :meth:`retry_failed`, :meth:`heartbeat`.

    >>> import tempfile, os
    >>> store = Store(os.path.join(tempfile.mkdtemp(), "runs.sqlite"))
    >>> store.register("demo", "name = 'demo'", [("AdamW", {"lr": 0.1})], key=lambda c: str(c["lr"]))
    1
    >>> [run] = store.claim("demo", 4, group=lambda run: 0)
    >>> store.finish(run["id"], {"test_acc": 0.9}, [{"step": 10, "test_loss": 0.3}])
    True
    >>> store.runs()[0]["status"], store.runs()[0]["final"], store.curves(run["id"])
    ('done', {'test_acc': 0.9}, {'test_loss': [(10, 0.3)]})
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True, readonly: bool = False,
                 busy_timeout: float = BUSY_TIMEOUT_S):
        text = os.fspath(path)
        if text == ":memory:" or text.startswith("file:"):
            raise ValueError(f"store must be a file path (processes share it through the file), got {text!r}")
        self.path = Path(text)
        self.readonly = readonly
        if self.path.is_dir():
            raise ValueError(f"store {text!r} is a directory; give a file path such as {text!r}/runs.sqlite")
        exists = self.path.exists()
        if (readonly or not create) and not exists:
            raise FileNotFoundError(f"store {text!r} does not exist")
        if exists and not self.path.is_file():
            raise ValueError(f"store {text!r} is not a regular file")
        empty = not exists or self.path.stat().st_size == 0
        if readonly and empty:
            raise NotAStoreError(f"{text!r} is not a decaylab store: it is an empty file (0 bytes); "
                                 "`decaylab sweep SPEC --store PATH` creates a store")
        if not exists:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if readonly:  # never creates, locks for writing, or converts the file (mode=ro)
            self._conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=busy_timeout,
                                         isolation_level=None)
        else:
            self._conn = sqlite3.connect(text, timeout=busy_timeout, isolation_level=None)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            # Checked before anything is written: a file that is not a store is left as it was.
            has_tables = check_schema(self._conn, repr(text), empty_ok=not readonly)
            if not readonly:
                if not has_tables and not empty and self._application_id() != APPLICATION_ID:
                    raise NotAStoreError(f"{text!r} is not a decaylab store: it is an SQLite database with no "
                                         "tables, not made by decaylab; a sweep creates a store only at a new path "
                                         "or an empty file")
                self._create_or_upgrade(text)
                mode = _retry_locked(lambda: self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0],
                                     busy_timeout)
                if mode.lower() != "wal":
                    raise ValueError(f"store {text!r} could not be put in WAL mode (journal_mode is {mode!r})")
                self._conn.execute("PRAGMA synchronous = FULL")
                self._conn.execute("PRAGMA foreign_keys = ON")
            self._tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except NotAStoreError:
            self._conn.close()
            raise
        except sqlite3.DatabaseError as error:
            self._conn.close()
            raise ValueError(describe_error(text, error)) from None
        except BaseException:
            self._conn.close()
            raise
        self.host = socket.gethostname()

    def _application_id(self) -> int:
        return self._conn.execute("PRAGMA application_id").fetchone()[0]

    def _create_or_upgrade(self, text: str) -> None:
        """Create the tables a store lacks (all of them in an empty file; the later additions in an
        older store) in one transaction, checking the file again under the lock: another process may
        have created the store meanwhile."""
        with self._write() as conn:
            check_schema(conn, repr(text), empty_ok=True)
            for statement in SCHEMA.split(";"):  # IF NOT EXISTS: also adds what an older store lacks
                if statement.strip():
                    conn.execute(statement)
            if self._application_id() != APPLICATION_ID:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- plumbing --------------------------------------------------------------------------------

    @contextmanager
    def _write(self):
        """One short write transaction; the database lock is taken at BEGIN, so it never deadlocks."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # -- reading ---------------------------------------------------------------------------------

    def runs(self, sweep: str | None = None, status: str | None = None, *, label: str | None = None) -> list[dict]:
        """Every run (filtered by sweep, status, label) as a dict of the ``runs`` columns, ``config``
        and ``final`` decoded from JSON (``final`` is None until the run is done; a diverged run's
        metrics are all None: :func:`~decaylab.store.schema.decode_final`), in id order, with
        ``spec_version``, ``deaths`` and ``diverged`` from ``run_meta`` (None, 0, None where unknown).

        Raises ``ValueError`` naming the run for a row that a decaylab store cannot hold (an unknown
        status, a config or final that is not JSON)."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        where, args = [], []
        for column, value in (("sweep", sweep), ("status", status), ("label", label)):
            if value is not None:
                where.append(f"r.{column} = ?")
                args.append(value)
        sql = f"SELECT {', '.join('r.' + c for c in RUNS_COLUMNS)}, {self._meta_columns()} FROM runs r"
        if "run_meta" in self._tables:
            sql += " LEFT JOIN run_meta m ON m.run_id = r.id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._conn.execute(sql + " ORDER BY r.id", args).fetchall()
        out = []
        for row in rows:
            run = dict(zip((*RUNS_COLUMNS, *_META), row, strict=True))
            if run["status"] not in STATUSES:
                raise ValueError(f"run {run['id']} in {self.path} has status {run['status']!r}; a store's runs are "
                                 f"{', '.join(STATUSES)} (was the file edited by hand?)")
            run["config"] = decode_config(run["config"], run["id"])
            run["final"], run["diverged"] = decode_final(run["final"], run["diverged"], run["id"])
            run["deaths"] = run["deaths"] or 0
            out.append(run)
        return out

    def _meta_columns(self) -> str:
        if "run_meta" in self._tables:
            return "m.spec_version, m.deaths, m.diverged"
        return "NULL, 0, NULL"  # a store written before run_meta, opened read-only

    def curves(self, run_id: int) -> dict[str, list[tuple[int, float]]]:
        """A run's curves: ``metric -> [(step, value), ...]`` in step order."""
        out: dict[str, list[tuple[int, float]]] = {}
        for step, metric, value in self._conn.execute(
                "SELECT step, metric, value FROM curves WHERE run_id = ? ORDER BY metric, step", (run_id,)):
            out.setdefault(metric, []).append((step, value))
        return out

    def sweeps(self) -> list[dict]:
        """Every sweep as ``{"name", "spec", "created"}`` (``spec``: the latest spec text), oldest first."""
        rows = self._conn.execute("SELECT name, spec, created FROM sweeps ORDER BY created, name").fetchall()
        return [dict(zip(("name", "spec", "created"), row, strict=True)) for row in rows]

    def spec_versions(self, sweep: str) -> list[dict]:
        """Every spec text ``sweep`` was registered with, as ``{"version", "spec", "created"}``, oldest
        first (a store written before versions were kept has its one latest text as version 1)."""
        if "spec_versions" in self._tables:
            rows = self._conn.execute("SELECT version, spec, created FROM spec_versions WHERE sweep = ? "
                                      "ORDER BY version", (sweep,)).fetchall()
            if rows:
                return [dict(zip(("version", "spec", "created"), row, strict=True)) for row in rows]
        row = self._conn.execute("SELECT spec, created FROM sweeps WHERE name = ?", (sweep,)).fetchone()
        return [] if row is None else [{"version": 1, "spec": row[0], "created": row[1]}]

    def sweep_meta(self, sweep: str) -> dict[str, Any]:
        """What the store records about ``sweep`` beyond its spec (``per_model``: the config fields that
        vary within a stacked group), JSON-decoded; ``{}`` for a store or sweep from before it was kept."""
        if "sweep_meta" not in self._tables:
            return {}
        rows = self._conn.execute("SELECT name, value FROM sweep_meta WHERE sweep = ?", (sweep,)).fetchall()
        return {name: json.loads(value) for name, value in rows}

    def statuses(self, sweep: str) -> dict[str, str]:
        """``run key -> status`` for every run of ``sweep`` (cheap: decodes no JSON)."""
        return dict(self._conn.execute("SELECT key, status FROM runs WHERE sweep = ?", (sweep,)).fetchall())

    def counts(self, sweep: str | None = None) -> dict[str, int]:
        """How many runs (of one sweep, or all) are in each status."""
        sql = "SELECT status, COUNT(*) FROM runs" + (" WHERE sweep = ?" if sweep is not None else "")
        counts = dict.fromkeys(STATUSES, 0)
        counts.update(self._conn.execute(sql + " GROUP BY status", () if sweep is None else (sweep,)).fetchall())
        return counts

    # -- writing ---------------------------------------------------------------------------------

    def register(self, sweep: str, spec_text: str, configs: Iterable[tuple[str, Any]], *,
                 key: Callable[[Any], str] | None = None, to_dict: Callable[[Any], dict] | None = None,
                 allow_spec_change: bool = False, per_model: Sequence[str] | None = None) -> int:
        """Record a sweep, its spec text and its runs as ``pending``; runs already in the store (same
        sweep and key, any status) are left as they are. Returns how many runs were new.

        ``configs`` are ``(label, config)`` pairs; a run's key and stored JSON are
        ``config.key()`` and ``config.to_dict()`` unless ``key`` / ``to_dict`` are given.
        A spec text the sweep has not had before becomes its next version (:meth:`spec_versions`;
        ``sweeps.spec`` holds the latest), and the new runs are labelled with it. ``per_model``: the
        config fields that vary within a stacked group (the run config class's own list), kept in
        ``sweep_meta`` for readers that group runs into methods (:meth:`sweep_meta`).

        Raises:
            SpecConflictError: the spec gives a run the store already holds another label (a renamed
                method), ``allow_spec_change`` is False and the text is not a version the sweep has
                already; nothing is written. With ``allow_spec_change`` (once: the version is kept),
                runs already trained keep the label they were trained with and pending ones take the
                new label.
        """
        key = key or (lambda c: c.key())
        to_dict = to_dict or (lambda c: c.to_dict() if hasattr(c, "to_dict") else dict(c))
        rows = [(sweep, key(c), json.dumps(to_dict(c), sort_keys=True), label) for label, c in configs]
        now = time.time()
        with self._write() as conn:
            stored = {k: (run_id, label, status) for run_id, k, label, status in conn.execute(
                "SELECT id, key, label, status FROM runs WHERE sweep = ?", (sweep,))}
            relabelled = [(stored[k], label) for _, k, _, label in rows if k in stored and stored[k][1] != label]
            known = conn.execute("SELECT 1 FROM spec_versions WHERE sweep = ? AND spec = ?",
                                 (sweep, spec_text)).fetchone() is not None  # a change allowed before
            if relabelled and not (allow_spec_change or known):
                raise SpecConflictError(_conflict_message(sweep, self.path, relabelled))
            version = self._spec_version(conn, sweep, spec_text, now)
            if per_model is not None:
                conn.execute("INSERT INTO sweep_meta (sweep, name, value) VALUES (?, 'per_model', ?) "
                             "ON CONFLICT (sweep, name) DO UPDATE SET value = excluded.value",
                             (sweep, json.dumps(list(per_model))))
            conn.execute("INSERT INTO sweeps (name, spec, created) VALUES (?, ?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec", (sweep, spec_text, now))
            for (run_id, _, status), label in relabelled:
                if status == "pending":  # never trained: it is run with the label of the spec that runs it
                    conn.execute("UPDATE runs SET label = ? WHERE id = ?", (label, run_id))
                    conn.execute("INSERT INTO run_meta (run_id, spec_version) VALUES (?, ?) ON CONFLICT (run_id) "
                                 "DO UPDATE SET spec_version = excluded.spec_version", (run_id, version))
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO runs (sweep, key, config, label, status) "
                             "VALUES (?, ?, ?, ?, 'pending')", rows)
            added = conn.total_changes - before
            if added:  # the new runs only: a run from before run_meta has no known version
                conn.executemany("INSERT OR IGNORE INTO run_meta (run_id, spec_version) "
                                 "SELECT id, ? FROM runs WHERE sweep = ? AND key = ?",
                                 [(version, sweep, k) for _, k, _, _ in rows if k not in stored])
            return added

    def _spec_version(self, conn: sqlite3.Connection, sweep: str, spec_text: str, now: float) -> int:
        """The version number of ``spec_text`` for ``sweep``, adding it (and, in a store from before
        versions, the one text it kept, as version 1) when new."""
        versions = dict(conn.execute("SELECT spec, version FROM spec_versions WHERE sweep = ?", (sweep,)).fetchall())
        if not versions:
            old = conn.execute("SELECT spec, created FROM sweeps WHERE name = ?", (sweep,)).fetchone()
            if old is not None:
                conn.execute("INSERT INTO spec_versions VALUES (?, 1, ?, ?)", (sweep, old[0], old[1]))
                versions = {old[0]: 1}
        if spec_text in versions:
            return versions[spec_text]
        version = max(versions.values(), default=0) + 1
        conn.execute("INSERT INTO spec_versions VALUES (?, ?, ?, ?)", (sweep, version, spec_text, now))
        return version

    def claim(self, sweep: str, n: int, *, group: Callable[[dict], Hashable],
              keys: Iterable[str] | None = None) -> list[dict]:
        """Atomically take up to ``n`` pending runs of ``sweep`` that can train together, mark them
        ``running`` under this process's lease, and return them (dicts as :meth:`runs` gives).

        Runs belong together when ``group(run)`` is equal: the caller's key function sees the run's
        columns, ``config`` still JSON text (the sweep runner groups by run key, since its spec knows
        each run's stack key: the store needs no run config class); the group of the oldest pending run
        is taken first, in even parts (a group
        of 72 pending runs with ``n = 16`` is claimed 15 at a time, not 16, 16, 16, 16 and 8). ``keys`` limits the
        claim to those run keys (the runner passes its spec's keys). Returns ``[]`` when no run is
        pending.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        wanted = None if keys is None else set(keys)
        now = time.time()
        pid = os.getpid()
        start = _process_start(pid)
        with self._write() as conn:
            rows = conn.execute(f"SELECT {', '.join(RUNS_COLUMNS)} FROM runs WHERE sweep = ? AND status = 'pending' "
                                "ORDER BY id", (sweep,)).fetchall()
            chosen: list[dict] = []
            first = None
            for row in rows:
                run = dict(zip(RUNS_COLUMNS, row, strict=True))
                if wanted is not None and run["key"] not in wanted:
                    continue
                g = group(run)
                if first is None:
                    first = g
                if g == first:
                    chosen.append(run)
            # Split the group evenly: 72 runs at n = 16 go as 15, 15, 14, 14, 14, not 16×4 + 8.
            size = math.ceil(len(chosen) / math.ceil(len(chosen) / n)) if chosen else 0
            chosen = chosen[:size]
            for run in chosen:
                run["config"] = decode_config(run["config"], run["id"])
                conn.execute("UPDATE runs SET status = 'running', started = ?, error = NULL WHERE id = ?",
                             (now, run["id"]))
                conn.execute("INSERT OR REPLACE INTO leases (run_id, host, pid, proc_start, heartbeat) "
                             "VALUES (?, ?, ?, ?, ?)", (run["id"], self.host, pid, start, now))
                run["status"], run["started"], run["error"] = "running", now, None
        return chosen

    def finish(self, run_id: int, final: Any, curves: Sequence[dict[str, Any]] | None = None) -> bool:
        """Write a run's final metrics and curves and mark it ``done``, all in one transaction.

        ``final`` is a ``RunResult`` (its ``final`` and ``curves`` are written) or the dict of final
        metrics, with ``curves`` beside it. Every value is checked before anything is written. A run
        whose loss is not finite diverged: every final metric is written as null, and the reason
        goes to ``run_meta.diverged`` (its curves keep their finite points).
        Returns False (and writes nothing) if the run is already done: a run is done exactly once,
        even if a process that was wrongly thought dead finishes it too.
        """
        if hasattr(final, "final"):  # a RunResult
            curves = getattr(final, "curves", None) if curves is None else curves
            final = final.final
        final_text, diverged = _encode_final(final)
        rows = _curve_rows(run_id, curves)  # checked before the transaction
        with self._write() as conn:
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(f"no run with id {run_id} in {self!r}")
            if row[0] == "done":
                return False
            conn.execute("DELETE FROM curves WHERE run_id = ?", (run_id,))
            self._write_curves(conn, rows)
            conn.execute("UPDATE runs SET status = 'done', final = ?, error = NULL, finished = ? WHERE id = ?",
                         (final_text, time.time(), run_id))
            conn.execute("INSERT INTO run_meta (run_id, diverged) VALUES (?, ?) ON CONFLICT (run_id) "
                         "DO UPDATE SET diverged = excluded.diverged", (run_id, diverged))
            conn.execute("DELETE FROM leases WHERE run_id = ?", (run_id,))
        return True

    def _write_curves(self, conn: sqlite3.Connection, rows: list[tuple[int, int, str, float]]) -> None:
        # A later point for the same (step, metric) replaces an earlier one (e.g. a final
        # evaluation at the last interval's step).
        conn.executemany("INSERT OR REPLACE INTO curves (run_id, step, metric, value) VALUES (?, ?, ?, ?)", rows)

    def fail(self, run_ids: int | Iterable[int], error: str) -> None:
        """Mark runs ``failed`` with an error text (runs already done are left done)."""
        ids = [run_ids] if isinstance(run_ids, int) else list(run_ids)
        now = time.time()
        with self._write() as conn:
            for run_id in ids:
                conn.execute("UPDATE runs SET status = 'failed', error = ?, finished = ? "
                             "WHERE id = ? AND status != 'done'", (str(error), now, run_id))
                conn.execute("DELETE FROM leases WHERE run_id = ?", (run_id,))

    def release(self, run_ids: Iterable[int]) -> int:
        """Put running runs back to ``pending`` (an interrupted process gives back its runs)."""
        ids = list(run_ids)
        with self._write() as conn:
            before = conn.total_changes
            for run_id in ids:
                conn.execute("UPDATE runs SET status = 'pending', started = NULL WHERE id = ? AND status = 'running'",
                             (run_id,))
            changed = conn.total_changes - before
            for run_id in ids:
                conn.execute("DELETE FROM leases WHERE run_id = ?", (run_id,))
        return changed

    def heartbeat(self, run_ids: Iterable[int]) -> None:
        """Renew this process's lease on runs it is training (a live runner calls this every 30 s)."""
        now = time.time()
        with self._write() as conn:
            conn.executemany("UPDATE leases SET heartbeat = ? WHERE run_id = ?", [(now, i) for i in run_ids])

    def requeue_stale(self, sweep: str | None = None, *, stale_after: float = STALE_AFTER_S,
                      max_deaths: int = MAX_DEATHS) -> int:
        """Put ``running`` runs whose process is gone back to ``pending``; returns how many went back.

        Stale: held by a process on this host that is no longer alive (or a reused pid); held on
        another host (or with no lease recorded) with no heartbeat for ``stale_after`` seconds.
        Each such death is counted per run; a run whose process died ``max_deaths`` times is
        marked ``failed`` with that reason instead (``retry_failed`` runs it again, from zero).
        """
        with self._write() as conn:
            stale = self._stale(conn, sweep, stale_after, details=True)
            return sum(self._count_death(conn, run_id, where, max_deaths) for run_id, where in stale)

    def died(self, run_ids: Iterable[int], where: str, *, max_deaths: int = MAX_DEATHS) -> int:
        """Count a death for running runs whose process died while training them (``where``: which, for
        the reason); as :meth:`requeue_stale` does: back to ``pending``, or ``failed`` at ``max_deaths``
        deaths. Returns how many went back (a run no longer ``running`` is left as it is)."""
        with self._write() as conn:
            ids = [run_id for run_id in run_ids
                   if (conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone() or [None])[0]
                   == "running"]
            return sum(self._count_death(conn, run_id, where, max_deaths) for run_id in ids)

    def _count_death(self, conn: sqlite3.Connection, run_id: int, where: str, max_deaths: int) -> int:
        """One more death of ``run_id``: pending again (returns 1), or failed with the reason (returns 0)."""
        conn.execute("INSERT INTO run_meta (run_id, deaths) VALUES (?, 1) ON CONFLICT (run_id) "
                     "DO UPDATE SET deaths = deaths + 1", (run_id,))
        deaths = conn.execute("SELECT deaths FROM run_meta WHERE run_id = ?", (run_id,)).fetchone()[0]
        conn.execute("DELETE FROM leases WHERE run_id = ?", (run_id,))
        if deaths >= max_deaths:
            conn.execute("UPDATE runs SET status = 'failed', error = ?, finished = ? WHERE id = ?",
                         (_died_text(deaths, where), time.time(), run_id))
            return 0
        conn.execute("UPDATE runs SET status = 'pending', started = NULL WHERE id = ?", (run_id,))
        return 1

    def stale(self, sweep: str | None = None, *, stale_after: float = STALE_AFTER_S) -> list[int]:
        """The ids of ``running`` runs whose process is gone (see :meth:`requeue_stale`)."""
        return self._stale(self._conn, sweep, stale_after)

    def _stale(self, conn: sqlite3.Connection, sweep: str | None, stale_after: float,
               details: bool = False) -> list[Any]:
        """The stale runs' ids (with ``details``: ``(id, where its process was)`` pairs)."""
        now = time.time()
        if "leases" in self._tables:
            sql = ("SELECT r.id, r.started, l.host, l.pid, l.proc_start, l.heartbeat FROM runs r "
                   "LEFT JOIN leases l ON l.run_id = r.id WHERE r.status = 'running'")
        else:  # a store from before leases, opened read-only: no run has a lease
            sql = "SELECT r.id, r.started, NULL, NULL, NULL, NULL FROM runs r WHERE r.status = 'running'"
        rows = conn.execute(sql + (" AND r.sweep = ?" if sweep is not None else ""),
                            () if sweep is None else (sweep,)).fetchall()
        stale = []
        for run_id, started, host, pid, proc_start, beat in rows:
            if host is None:
                dead = (started or 0) < now - stale_after
            elif host == self.host:
                dead = not process_alive(pid, proc_start)
            else:
                dead = beat < now - stale_after
            if dead:
                where = "no lease" if host is None else f"pid {pid} on {host}"
                stale.append((run_id, where) if details else run_id)
        return stale

    def retry_failed(self, sweep: str, keys: Iterable[str] | None = None) -> int:
        """Put a sweep's failed runs (or those among ``keys``) back to ``pending``; returns how many."""
        rows = self._conn.execute("SELECT id, key FROM runs WHERE sweep = ? AND status = 'failed'", (sweep,)).fetchall()
        wanted = None if keys is None else set(keys)
        ids = [run_id for run_id, key in rows if wanted is None or key in wanted]
        with self._write() as conn:
            for run_id in ids:
                conn.execute("UPDATE runs SET status = 'pending', error = NULL, started = NULL, finished = NULL "
                             "WHERE id = ? AND status = 'failed'", (run_id,))
                conn.execute("UPDATE run_meta SET deaths = 0 WHERE run_id = ?", (run_id,))
        return len(ids)


_META = ("spec_version", "deaths", "diverged")


def _died_text(deaths: int, where: str) -> str:
    return (f"the process training this run died {deaths} times without finishing it (last: {where}); the operating "
            "system may have killed it, e.g. for lack of memory: lower batch_size or --stack, then --retry-failed")


def _conflict_message(sweep: str, path: Path, relabelled: list[tuple[tuple[int, str, str], str]]) -> str:
    renames: dict[tuple[str, str], int] = {}
    for (_, old, _), new in relabelled:
        renames[(old, new)] = renames.get((old, new), 0) + 1
    shown = "; ".join(f"{n} run(s) labelled {old!r} in the store are {new!r} in this spec"
                      for (old, new), n in list(renames.items())[:3])
    more = f" (and {len(renames) - 3} more renames)" if len(renames) > 3 else ""
    return (f"sweep {sweep!r} in {str(path)!r} was run with another spec that labels its runs differently: "
            f"{shown}{more}. Give this spec a new name (or use a new store) to keep the sweeps apart, or pass "
            "--allow-spec-change (allow_spec_change=True) to add it as a new version of the sweep: runs already "
            "trained keep the label they were trained with, pending runs take this spec's")
