"""Sweeps: grids of training runs as data files, a shared SQLite run store, and a resumable runner.

- :func:`load_spec` reads a TOML spec (dataset, model, lr and λ grids, decay forms, seeds) into
  ``(method label, TrainConfig)`` runs (:mod:`decaylab.sweep.spec`); ``decaylab/sweep/specs/``
  holds checked-in specs (``demo.toml``).
- :class:`Store` is the run store, one SQLite file in WAL mode that several processes can share
  (:mod:`decaylab.store`); the report reads it.
- :func:`run_sweep` trains what the store does not have yet, stacked, resumable
  (:mod:`decaylab.sweep.driver`: one loop; :mod:`decaylab.sweep.executors` train the groups in this
  process, in N worker processes, or on Ray: :mod:`decaylab.sweep.ray_backend`); :func:`format_status`
  shows a store's progress.
- ``decaylab sweep SPEC`` and ``decaylab status STORE`` (:mod:`decaylab.cli.sweep`, :mod:`decaylab.cli.status`).
"""
from ..store import SCHEMA, STATUSES, Store
from .driver import DEFAULT_STACK, SweepAborted, SweepSummary, SweepTooLarge, default_processes, run_sweep
from .executors import Executor, LocalExecutor, ProcessExecutor
from .spec import Spec, available_specs, find_spec, linear_grid, load_spec, log_grid
from .status import format_status, status_rows

__all__ = [
    "DEFAULT_STACK", "SCHEMA", "STATUSES", "Executor", "LocalExecutor", "ProcessExecutor", "Spec", "Store",
    "SweepAborted", "SweepSummary", "SweepTooLarge", "available_specs", "default_processes",
    "find_spec", "format_status", "linear_grid", "load_spec", "log_grid", "run_sweep", "status_rows",
]
