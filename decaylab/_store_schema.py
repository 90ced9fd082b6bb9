"""The run store's schema: the contract between :mod:`decaylab.sweep` (which writes the store) and
:mod:`decaylab.report` (which only reads it). Standard library only, so that the report can read a
store without importing the sweep engine or torch."""

STATUSES = ("pending", "running", "done", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  id INTEGER PRIMARY KEY, sweep TEXT NOT NULL, key TEXT NOT NULL,
  config TEXT NOT NULL,
  label TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('pending','running','done','failed')),
  final TEXT,
  error TEXT, started REAL, finished REAL, UNIQUE (sweep, key));
CREATE TABLE IF NOT EXISTS curves (run_id INTEGER NOT NULL REFERENCES runs(id), step INTEGER NOT NULL,
  metric TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (run_id, step, metric));
CREATE TABLE IF NOT EXISTS sweeps (name TEXT PRIMARY KEY, spec TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (run_id INTEGER PRIMARY KEY REFERENCES runs(id), host TEXT NOT NULL,
  pid INTEGER NOT NULL, proc_start INTEGER, heartbeat REAL NOT NULL);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (sweep, status);
"""
