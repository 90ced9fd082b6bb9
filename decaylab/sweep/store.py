r"""The run store: one SQLite file (WAL) with every run's config, status, curves and final metrics.

Schema (``decaylab.report`` reads it; binding)::

    runs    (id, sweep, key, config, label, status, final, error, started, finished)  UNIQUE (sweep, key)
    curves  (run_id, step, metric, value)                                          PRIMARY KEY (run_id, step, metric)
    sweeps  (name, spec, created)

``config`` is the JSON of ``TrainConfig.to_dict()``, ``final`` the JSON of ``RunResult.final``,
``status`` one of ``pending``, ``running``, ``done``, ``failed``; times are Unix seconds. Metric
values that are not finite (a diverged run's loss) are written as JSON ``null`` in ``final`` and
read back as ``nan``; in ``curves`` they are left out (SQLite stores NaN as NULL).

A fourth table, ``leases (run_id, host, pid, proc_start, heartbeat)``, records which process
holds each ``running`` run, so that a process that died (killed, crashed, power cut) does not
leave its runs ``running`` for ever: :meth:`Store.requeue_stale` puts them back to ``pending``.
The policy: a run held by a process **on this host** whose pid is gone (or now belongs to another
process, or is a zombie) is stale at once; a run held **on another host** is stale when its
heartbeat is older than ``stale_after`` seconds (a live runner beats every 30 s).

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

from decaylab._store_schema import SCHEMA, STATUSES

__all__ = ["Store", "SCHEMA", "STATUSES"]

RUNS_COLUMNS = ("id", "sweep", "key", "config", "label", "status", "final", "error", "started", "finished")
BUSY_TIMEOUT_S = 60.0
STALE_AFTER_S = 600.0


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


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _encode_final(final: dict[str, Any]) -> str:
    if not isinstance(final, dict):
        raise TypeError(f"RunResult.final must be a dict of metric -> number, got {type(final).__name__}")
    return json.dumps({str(k): _finite_or_none(_plain(v)) for k, v in final.items()}, allow_nan=False, sort_keys=True)


def _decode_final(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    return {k: (math.nan if v is None else v) for k, v in json.loads(text).items()}


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

    ``Store(path)`` creates the file and its tables if needed (``create=False``: the file must
    exist). Reading: :meth:`runs`, :meth:`curves`, :meth:`sweeps`. Writing (the runner's side):
    :meth:`register`, :meth:`claim`, :meth:`finish`, :meth:`fail`, :meth:`release`,
    :meth:`requeue_stale`, :meth:`retry_failed`, :meth:`heartbeat`.

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

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True, busy_timeout: float = BUSY_TIMEOUT_S):
        text = os.fspath(path)
        if text == ":memory:" or text.startswith("file:"):
            raise ValueError(f"store must be a file path (processes share it through the file), got {text!r}")
        self.path = Path(text)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"store {text!r} does not exist")
        if self.path.is_dir():
            raise ValueError(f"store {text!r} is a directory; give a file path such as {text!r}/runs.sqlite")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(text, timeout=busy_timeout, isolation_level=None)
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = _retry_locked(lambda: self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0], busy_timeout)
            if mode.lower() != "wal":
                raise ValueError(f"store {text!r} could not be put in WAL mode (journal_mode is {mode!r})")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            columns = [row[1] for row in self._conn.execute("PRAGMA table_info(runs)")]
            if columns and tuple(columns) != RUNS_COLUMNS:
                raise ValueError(f"{text!r} is not a decaylab store: its table 'runs' has columns {columns}, "
                                 f"expected {list(RUNS_COLUMNS)}")
            with self._write() as conn:  # IF NOT EXISTS: also adds what an older store lacks
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
        except sqlite3.DatabaseError as error:
            self._conn.close()
            raise ValueError(f"{text!r} is not a decaylab store (SQLite says: {error})") from None
        except BaseException:
            self._conn.close()
            raise
        self.host = socket.gethostname()

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
        and ``final`` decoded from JSON (``final`` is None until the run is done), in id order."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        where, args = [], []
        for column, value in (("sweep", sweep), ("status", status), ("label", label)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = f"SELECT {', '.join(RUNS_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._conn.execute(sql + " ORDER BY id", args).fetchall()
        out = []
        for row in rows:
            run = dict(zip(RUNS_COLUMNS, row, strict=True))
            run["config"] = json.loads(run["config"])
            run["final"] = _decode_final(run["final"])
            out.append(run)
        return out

    def curves(self, run_id: int) -> dict[str, list[tuple[int, float]]]:
        """A run's curves: ``metric -> [(step, value), ...]`` in step order."""
        out: dict[str, list[tuple[int, float]]] = {}
        for step, metric, value in self._conn.execute(
                "SELECT step, metric, value FROM curves WHERE run_id = ? ORDER BY metric, step", (run_id,)):
            out.setdefault(metric, []).append((step, value))
        return out

    def sweeps(self) -> list[dict]:
        """Every sweep as ``{"name", "spec", "created"}``, oldest first."""
        rows = self._conn.execute("SELECT name, spec, created FROM sweeps ORDER BY created, name").fetchall()
        return [dict(zip(("name", "spec", "created"), row, strict=True)) for row in rows]

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
                 key: Callable[[Any], str] | None = None, to_dict: Callable[[Any], dict] | None = None) -> int:
        """Record a sweep and its runs as ``pending``; runs already in the store (same sweep and
        key, any status) are left as they are. Returns how many runs were new.

        ``configs`` are ``(label, config)`` pairs; a run's key and stored JSON are
        ``config.key()`` and ``config.to_dict()`` unless ``key`` / ``to_dict`` are given.
        The sweep's spec text is updated to ``spec_text`` (the latest spec that added runs wins).
        """
        key = key or (lambda c: c.key())
        to_dict = to_dict or (lambda c: c.to_dict() if hasattr(c, "to_dict") else dict(c))
        rows = [(sweep, key(c), json.dumps(to_dict(c), sort_keys=True), label) for label, c in configs]
        with self._write() as conn:
            conn.execute("INSERT INTO sweeps (name, spec, created) VALUES (?, ?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec", (sweep, spec_text, time.time()))
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO runs (sweep, key, config, label, status) "
                             "VALUES (?, ?, ?, ?, 'pending')", rows)
            return conn.total_changes - before

    def claim(self, sweep: str, n: int, *, group: Callable[[dict], Hashable] | None = None,
              keys: Iterable[str] | None = None) -> list[dict]:
        """Atomically take up to ``n`` pending runs of ``sweep`` that can train together, mark them
        ``running`` under this process's lease, and return them (dicts as :meth:`runs` gives).

        Runs belong together when ``group(run)`` is equal (default: ``TrainConfig.stack_key()`` of
        the run's config); the group of the oldest pending run is taken first, in even parts (a group
        of 72 pending runs with ``n = 16`` is claimed 15 at a time, not 16, 16, 16, 16 and 8). ``keys`` limits the
        claim to those run keys (the runner passes its spec's keys). Returns ``[]`` when no run is
        pending.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        decode_all = group is None  # the default group reads the config; a caller's may need only the key
        group = group or _stack_key_of_run
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
                if decode_all:
                    run["config"] = json.loads(run["config"])
                g = group(run)
                if first is None:
                    first = g
                if g == first:
                    chosen.append(run)
            # Split the group evenly: 72 runs at n = 16 go as 15, 15, 14, 14, 14, not 16×4 + 8.
            size = math.ceil(len(chosen) / math.ceil(len(chosen) / n)) if chosen else 0
            chosen = chosen[:size]
            if not decode_all:
                for run in chosen:
                    run["config"] = json.loads(run["config"])
            for run in chosen:
                conn.execute("UPDATE runs SET status = 'running', started = ?, error = NULL WHERE id = ?",
                             (now, run["id"]))
                conn.execute("INSERT OR REPLACE INTO leases (run_id, host, pid, proc_start, heartbeat) "
                             "VALUES (?, ?, ?, ?, ?)", (run["id"], self.host, pid, start, now))
                run["status"], run["started"], run["error"] = "running", now, None
        return chosen

    def finish(self, run_id: int, final: Any, curves: Sequence[dict[str, Any]] | None = None) -> bool:
        """Write a run's final metrics and curves and mark it ``done``, all in one transaction.

        ``final`` is a ``RunResult`` (its ``final`` and ``curves`` are written) or the dict of final
        metrics, with ``curves`` beside it. Every value is checked before anything is written.
        Returns False (and writes nothing) if the run is already done: a run is done exactly once,
        even if a process that was wrongly thought dead finishes it too.
        """
        if hasattr(final, "final"):  # a RunResult
            curves = getattr(final, "curves", None) if curves is None else curves
            final = final.final
        final_text = _encode_final(final)
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

    def requeue_stale(self, sweep: str | None = None, *, stale_after: float = STALE_AFTER_S) -> int:
        """Put ``running`` runs whose process is gone back to ``pending``; returns how many.

        Stale: held by a process on this host that is no longer alive (or a reused pid); held on
        another host (or with no lease recorded) with no heartbeat for ``stale_after`` seconds.
        """
        with self._write() as conn:
            stale = self._stale(conn, sweep, stale_after)
            for run_id in stale:
                conn.execute("UPDATE runs SET status = 'pending', started = NULL WHERE id = ?", (run_id,))
                conn.execute("DELETE FROM leases WHERE run_id = ?", (run_id,))
        return len(stale)

    def stale(self, sweep: str | None = None, *, stale_after: float = STALE_AFTER_S) -> list[int]:
        """The ids of ``running`` runs whose process is gone (see :meth:`requeue_stale`)."""
        return self._stale(self._conn, sweep, stale_after)

    def _stale(self, conn: sqlite3.Connection, sweep: str | None, stale_after: float) -> list[int]:
        now = time.time()
        sql = ("SELECT r.id, r.started, l.host, l.pid, l.proc_start, l.heartbeat FROM runs r "
               "LEFT JOIN leases l ON l.run_id = r.id WHERE r.status = 'running'")
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
                stale.append(run_id)
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
        return len(ids)


def _stack_key_of_run(run: dict) -> Hashable:
    from decaylab.train import TrainConfig

    return TrainConfig.from_dict(run["config"]).stack_key()
