"""``decaylab sweep SPEC``: train every run of a sweep spec that its store does not have yet.

::

    decaylab sweep SPEC.toml [--store PATH] [--stack K | --no-stack] [--limit N] [--retry-failed] [--quiet]
                             [--yes] [--allow-spec-change] [--backend {local,ray}] [--address ADDR] [--workers N]

Exit status: 0; 1 when a run of the spec is left failed (or the sweep stopped); 2 for bad input (a
spec, a store, an argument), with one line that names it; 130 when interrupted (Ctrl-C or SIGTERM).
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any

from ._args import FAILED, INTERRUPTED, error, positive_int, stop_on_sigterm, stopped_how

__all__ = ["add_parser", "run", "DEFAULT_STORE"]

DEFAULT_STORE = "decaylab.sqlite"


HELP = "run a sweep spec (TOML): train every run not yet in the store"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ..sweep import DEFAULT_STACK  # the sweep package imports no torch

    parser = subparsers.add_parser(
        "sweep", help=HELP,
        description="Train every run of a sweep spec that the store does not have yet, several at once as stacked "
                    "models, writing each finished run at once. Killed and started again, it skips every "
                    "finished run; several processes may sweep one store together.")
    parser.add_argument("spec", metavar="SPEC",
                        help="the sweep spec: a .toml file, or the name of a checked-in spec (e.g. demo)")
    parser.add_argument("--store", default=DEFAULT_STORE, metavar="PATH",
                        help=f"the SQLite store the runs go to (default {DEFAULT_STORE}; created if missing or an "
                             "empty file; any other file must be a decaylab store)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--stack", type=positive_int("--stack"), default=DEFAULT_STACK, metavar="K",
                     help=f"train up to K runs at once as one stacked model (default {DEFAULT_STACK})")
    how.add_argument("--no-stack", action="store_true", help="train one run at a time (same as --stack 1)")
    parser.add_argument("--limit", type=positive_int("--limit"), default=None, metavar="N",
                        help="train at most N runs, then stop (the rest stay pending)")
    parser.add_argument("--processes", type=positive_int("--processes"), default=1, metavar="N",
                        help="local backend: train in N worker processes, one torch thread each (default 1: in this "
                             "process)")
    parser.add_argument("--retry-failed", action="store_true", help="train the runs that failed before again")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--yes", action="store_true",
                        help="confirm a large sweep (more runs than a sweep may start unasked; the spec may confirm "
                             "its own size with max_runs)")
    parser.add_argument("--allow-spec-change", action="store_true",
                        help="accept a spec that labels runs the store holds under this sweep's name differently "
                             "(a renamed method): trained runs keep their labels, pending ones take the new ones")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="where the runs train: in this process (local, the default) or as Ray tasks, one "
                             "group of stacked runs per task (ray; pip install 'decaylab[ray]'). The store "
                             "stays with this process either way")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="with --backend ray: the Ray cluster to join (auto, HOST:6379, ray://HOST:10001); "
                             "default: start a local Ray instance")
    parser.add_argument("--workers", type=positive_int("--workers"), default=None, metavar="N",
                        help="with --backend ray: groups in flight at once (default: as many as the cluster's "
                             "CPUs, or GPUs, hold)")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..store import Store, describe_error
    from ..sweep import SweepAborted, find_spec, load_spec, run_sweep

    backend = args.backend
    if backend != "ray":
        for option in ("address", "workers"):
            if getattr(args, option) is not None:
                return error("sweep", f"--{option} needs --backend ray")
    elif args.processes != 1:
        return error("sweep", "--processes is for the local backend; with --backend ray use --workers")
    try:
        spec = load_spec(find_spec(args.spec))
    except (FileNotFoundError, ValueError) as problem:
        return error("sweep", problem)
    try:
        existed = Path(args.store).exists()
        store = Store(args.store)
    except (OSError, ValueError) as problem:
        return error("sweep", f"--store {args.store}: {problem}")
    except sqlite3.DatabaseError as problem:
        return error("sweep", describe_error(args.store, problem))
    stack = 1 if args.no_stack else args.stack
    where = "" if backend == "local" else f", on Ray ({args.address or 'a local instance'})"
    print(f"sweep {spec.name!r}: {len(spec)} runs ({len(spec.methods)} methods), stack {stack}, store {args.store}"
          f"{where}", file=sys.stderr)
    try:
        with stop_on_sigterm():
            confirm = {"yes": args.yes, "allow_spec_change": args.allow_spec_change}
            if backend == "ray":
                from ..sweep.ray_backend import run_sweep_ray

                summary = run_sweep_ray(spec, store, address=args.address, workers=args.workers, stack=stack,
                                        limit=args.limit, retry_failed=args.retry_failed, progress=not args.quiet,
                                        **confirm)
            else:
                summary = run_sweep(spec, store, stack=stack, limit=args.limit, retry_failed=args.retry_failed,
                                    progress=not args.quiet, processes=args.processes, **confirm)
    except ModuleNotFoundError as problem:
        if backend != "ray" or not str(problem).startswith("the Ray backend"):
            raise
        return error("sweep", problem)
    except ConnectionError as problem:  # nothing answers at --address
        if backend != "ray":
            raise
        return error("sweep", f"--address {args.address}: {problem}")
    except KeyboardInterrupt as stop:
        print(f"{stopped_how(stop)}: the runs in flight went back to pending; every finished run is kept in "
              f"{args.store}. Run the same command again to go on.", file=sys.stderr)
        return INTERRUPTED
    except SweepAborted as problem:
        print(f"decaylab sweep: stopped: {problem}", file=sys.stderr)
        return FAILED
    except sqlite3.DatabaseError as problem:  # a store damaged or made unwritable under the sweep
        return error("sweep", describe_error(args.store, problem))
    except ValueError as problem:  # the runs cannot train here, a relabelling spec, an unconfirmed large sweep
        if not existed:  # refused before anything was registered: leave no empty store behind
            _remove_if_empty(store, args.store)
        return error("sweep", problem)
    finally:
        store.close()
    print(summary, file=sys.stderr)
    print(f"progress: decaylab status {args.store}", file=sys.stderr)
    return FAILED if summary.left_failed else 0


def _remove_if_empty(store: Any, path: str) -> None:
    """Delete the store this command created at ``path`` if no sweep was registered in it."""
    try:
        empty = not store.sweeps()
    except sqlite3.Error:
        return
    store.close()
    if empty:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
