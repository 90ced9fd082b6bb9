"""The run store: one SQLite file that a sweep writes and everything else reads.

- :mod:`~decaylab.store.schema` — the tables, :func:`check_schema` (is this file a store?), how a
  run's final metrics are encoded and decoded (one decoding of a diverged run: every metric ``None``);
- :mod:`~decaylab.store.writer` — :class:`Store`, the writer the sweep driver uses (register, claim,
  finish, leases, requeue), safe for several processes at once; it also reads (``decaylab status``);
- :mod:`~decaylab.store.reader` — :func:`load_sweep` and :func:`load_curves`, read-only, for the
  report, ``decaylab advise --from-store`` and the reproductions.

Standard library only: a store is read without torch. Nothing here knows the run config class: the
writer takes run keys and JSON-ready configs, and groups runs with a key function its caller gives.
"""
from .reader import Run, SweepData, load_curves, load_sweep, sweep_names
from .schema import (
    SCHEMA,
    SCHEMA_VERSION,
    STATUSES,
    NotAStoreError,
    check_schema,
    decode_final,
    describe_error,
    divergence,
    json_safe,
)
from .writer import SpecConflictError, Store, is_transient, process_alive

__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "STATUSES", "NotAStoreError", "Run", "SpecConflictError", "Store", "SweepData",
    "check_schema", "decode_final", "describe_error", "divergence", "is_transient", "json_safe", "load_curves",
    "load_sweep", "process_alive", "sweep_names",
]
