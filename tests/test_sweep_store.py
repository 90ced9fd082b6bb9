"""decaylab.store (the writer): the schema contract, registration, claims, atomic writes, stale leases."""
from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
import subprocess
import sys
import time

import pytest

from decaylab.store import process_alive
from decaylab.sweep import Store

# Verbatim from the contract between decaylab.train, decaylab.sweep and decaylab.report.
CONTRACT_SQL = """
CREATE TABLE runs (
  id INTEGER PRIMARY KEY, sweep TEXT NOT NULL, key TEXT NOT NULL,      -- key = TrainConfig.key()
  config TEXT NOT NULL,                                                -- JSON of TrainConfig.to_dict()
  label TEXT NOT NULL,                                                 -- the method label from the spec
  status TEXT NOT NULL CHECK (status IN ('pending','running','done','failed')),
  final TEXT,                                                          -- JSON of RunResult.final
  error TEXT, started REAL, finished REAL, UNIQUE (sweep, key));
CREATE TABLE curves (run_id INTEGER NOT NULL REFERENCES runs(id), step INTEGER NOT NULL,
  metric TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (run_id, step, metric));
CREATE TABLE sweeps (name TEXT PRIMARY KEY, spec TEXT NOT NULL, created REAL NOT NULL);  -- spec = the TOML text
"""


def by_key(config):
    return config["key"]


def configs(n, label="A", start=0):
    return [(label, {"key": f"k{i}", "lr": 10.0 ** -(i % 4), "seed": i}) for i in range(start, start + n)]


def new_store(tmp_path, n=0, **kwargs):
    store = Store(tmp_path / "runs.sqlite", **kwargs)
    if n:
        store.register("s", "name = 's'", configs(n), key=by_key)
    return store


def first_group(run):
    return 0


def shape(conn, table):
    info = conn.execute(f"PRAGMA table_info({table})").fetchall()
    fks = [row[2:5] for row in conn.execute(f"PRAGMA foreign_key_list({table})")]
    uniques = []
    for _, name, _unique, origin, _ in conn.execute(f"PRAGMA index_list({table})"):
        if origin in ("u", "pk"):
            uniques.append((origin, [r[2] for r in conn.execute(f"PRAGMA index_info({name!r})")]))
    return info, fks, sorted(uniques)


def test_schema_matches_contract(tmp_path):
    store = new_store(tmp_path)
    contract = sqlite3.connect(":memory:")
    contract.executescript(CONTRACT_SQL)
    mine = sqlite3.connect(store.path, isolation_level=None)
    for table in ("runs", "curves", "sweeps"):
        assert shape(mine, table) == shape(contract, table), table
    assert mine.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        mine.execute("INSERT INTO runs (sweep, key, config, label, status) VALUES ('s', 'k', '{}', 'A', 'paused')")
    # opening again (another process, an older store) keeps everything
    store.register("s", "spec", configs(2), key=by_key)
    assert len(Store(store.path).runs()) == 2


def test_not_a_store(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(ValueError, match="is not a decaylab store"):
        Store(junk)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE runs (id INTEGER, name TEXT)")
    with pytest.raises(ValueError, match=r"table 'runs' has columns \['id', 'name'\]"):
        Store(other)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Store(tmp_path / "missing.sqlite", create=False)
    assert not (tmp_path / "missing.sqlite").exists()
    with pytest.raises(ValueError, match="must be a file path"):
        Store(":memory:")
    with pytest.raises(ValueError, match="is a directory"):
        Store(tmp_path)


def test_register_is_idempotent(tmp_path):
    store = new_store(tmp_path)
    assert store.register("s", "v1", configs(5), key=by_key) == 5
    [run] = store.claim("s", 1, group=first_group)
    store.finish(run["id"], {"test_acc": 0.5})
    assert store.register("s", "v1", configs(5), key=by_key) == 0
    assert store.register("s", "v2", configs(7), key=by_key) == 2  # a grown spec adds only the new runs
    assert store.register("other", "v1", configs(5), key=by_key) == 5  # keys are per sweep
    runs = store.runs("s")
    assert [r["status"] for r in runs] == ["done"] + ["pending"] * 6
    assert runs[0]["final"] == {"test_acc": 0.5} and runs[1]["config"] == {"key": "k1", "lr": 0.1, "seed": 1}
    assert [s["spec"] for s in store.sweeps() if s["name"] == "s"] == ["v2"]
    assert store.counts("s") == {"pending": 6, "running": 0, "done": 1, "failed": 0}


def test_claim_groups_evenly_and_filters_keys(tmp_path):
    store = new_store(tmp_path)
    store.register("s", "spec", configs(10, "A") + configs(3, "B", start=10), key=by_key)
    label = lambda run: run["label"]  # noqa: E731
    sizes = []
    while group := store.claim("s", 4, group=label):
        assert len({run["label"] for run in group}) == 1
        assert all(run["status"] == "running" for run in group)
        sizes.append(len(group))
    assert sizes == [4, 3, 3, 3]  # 10 runs of A in parts of at most 4: 4, 3, 3; then B's 3
    assert store.counts("s")["running"] == 13
    store.release(r["id"] for r in store.runs("s"))
    assert [r["key"] for r in store.claim("s", 5, group=first_group, keys={"k3", "k11"})] == ["k3", "k11"]
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        store.claim("s", 0, group=first_group)


def test_finish_writes_final_and_curves(tmp_path):
    store = new_store(tmp_path, 2)
    run, other = store.claim("s", 2, group=first_group)
    curves = [{"step": 0, "test_loss": 2.3, "lr": 0.1}, {"step": 5, "test_loss": float("nan"), "test_acc": None},
              {"step": 5, "test_loss": 1.0, "lr": 0.05}]  # a later point at the same step wins
    # a non-finite metric that is not a loss (a diverged run's loss nulls every metric: test_hostile_report)
    assert store.finish(run["id"], {"test_acc": 0.8, "grad_norm": float("inf")}, curves)
    done = store.runs(status="done")[0]
    assert done["final"]["test_acc"] == 0.8 and done["final"]["grad_norm"] is None and done["diverged"] is None
    assert json.loads(sqlite3.connect(store.path).execute("SELECT final FROM runs WHERE id = ?", (run["id"],))
                      .fetchone()[0]) == {"test_acc": 0.8, "grad_norm": None}  # strict JSON in the file
    assert store.curves(run["id"]) == {"lr": [(0, 0.1), (5, 0.05)], "test_loss": [(0, 2.3), (5, 1.0)]}
    assert done["finished"] >= done["started"] > 0
    assert not store.finish(run["id"], {"test_acc": 0.1}, curves)  # done exactly once
    assert store.runs(status="done")[0]["final"]["test_acc"] == 0.8
    with pytest.raises(ValueError, match=r"curves\[0\]\['test_loss'\] must be a number, got 'x'"):
        store.finish(other["id"], {}, [{"step": 1, "test_loss": "x"}])
    with pytest.raises(ValueError, match=r"curves\[0\] must be a dict with a 'step'"):
        store.finish(other["id"], {}, [{"test_loss": 1.0}])
    assert store.runs(status="running")[0]["id"] == other["id"]


def test_finish_is_atomic(tmp_path, monkeypatch):
    store = new_store(tmp_path, 1)
    [run] = store.claim("s", 1, group=first_group)
    curves = [{"step": i, "test_loss": 1.0 / (i + 1)} for i in range(4)]

    def crash_halfway(conn, rows):
        conn.executemany("INSERT INTO curves (run_id, step, metric, value) VALUES (?, ?, ?, ?)", rows[:2])
        raise RuntimeError("crash between writing curves and the status")

    monkeypatch.setattr(store, "_write_curves", crash_halfway)
    with pytest.raises(RuntimeError, match="crash between"):
        store.finish(run["id"], {"test_acc": 0.9}, curves)
    check = Store(store.path)  # what another process sees
    [after] = check.runs()
    assert after["status"] == "running" and after["final"] is None and check.curves(run["id"]) == {}
    monkeypatch.undo()
    assert store.finish(run["id"], {"test_acc": 0.9}, curves)
    assert len(check.curves(run["id"])["test_loss"]) == 4 and check.runs()[0]["status"] == "done"


def test_fail_release_retry(tmp_path):
    store = new_store(tmp_path, 3)
    a, b, c = store.claim("s", 3, group=first_group)
    store.finish(a["id"], {"test_acc": 1.0})
    store.fail([a["id"], b["id"]], "ValueError: boom")
    assert store.release([c["id"]]) == 1
    runs = store.runs("s")
    assert [r["status"] for r in runs] == ["done", "failed", "pending"]  # a done run stays done
    assert runs[1]["error"] == "ValueError: boom"
    assert store.retry_failed("s") == 1
    assert [r["status"] for r in store.runs("s")] == ["done", "pending", "pending"]
    with pytest.raises(ValueError, match="status must be one of"):
        store.runs(status="finished")


def test_requeue_stale(tmp_path):
    store = new_store(tmp_path, 4)
    runs = store.claim("s", 4, group=first_group)
    assert store.requeue_stale() == 0  # this process is alive
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    assert not process_alive(dead_pid) and process_alive(__import__("os").getpid())
    conn = sqlite3.connect(store.path)
    with conn:
        conn.execute("UPDATE leases SET pid = ? WHERE run_id = ?", (dead_pid, runs[0]["id"]))
        conn.execute("UPDATE leases SET proc_start = proc_start + 1 WHERE run_id = ?", (runs[1]["id"],))  # reused pid
        conn.execute("UPDATE leases SET host = 'elsewhere', heartbeat = heartbeat - 3600 WHERE run_id = ?",
                     (runs[2]["id"],))
        conn.execute("UPDATE leases SET host = 'elsewhere' WHERE run_id = ?", (runs[3]["id"],))  # fresh heartbeat
    assert store.requeue_stale() == 3
    assert [r["status"] for r in store.runs()] == ["pending", "pending", "pending", "running"]
    assert conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 1


def _claim_worker(path, barrier, out):
    store = Store(path)
    barrier.wait()
    got = []
    while group := store.claim("s", 3, group=first_group):
        got.extend(run["id"] for run in group)
        time.sleep(0.01)  # "training": lets the other process interleave
        for run in group:
            store.finish(run["id"], {"test_acc": 0.5}, [{"step": 1, "test_loss": 1.0}])
    with open(out, "w") as f:
        json.dump(got, f)


def test_claims_are_disjoint_across_processes(tmp_path):
    store = new_store(tmp_path, 120)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    outs = [tmp_path / f"claimed{i}.json" for i in range(2)]
    procs = [ctx.Process(target=_claim_worker, args=(str(store.path), barrier, str(out))) for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    claimed = [json.loads(out.read_text()) for out in outs]
    assert not set(claimed[0]) & set(claimed[1]) and claimed[0] and claimed[1]
    assert sorted(claimed[0] + claimed[1]) == [r["id"] for r in store.runs()]
    assert store.counts("s")["done"] == 120
    assert sqlite3.connect(store.path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
