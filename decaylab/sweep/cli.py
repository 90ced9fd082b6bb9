"""The ``decaylab sweep`` and ``decaylab status`` commands.

``decaylab.cli`` registers them with :func:`add_cli` and runs the chosen one with
``args.handler(args)`` (an exit status); ``python -m decaylab.sweep.cli`` runs them alone.

::

    decaylab sweep SPEC.toml [--store PATH] [--stack K | --no-stack] [--limit N] [--retry-failed] [--quiet]
                             [--yes] [--allow-spec-change] [--backend {local,ray}] [--address ADDR] [--workers N]
    decaylab status STORE [--sweep NAME]

Exit status: 0; 1 when a run of the spec is left failed (or the sweep stopped); 2 for bad input (a
spec, a store, an argument), with one line that names it; 130 when interrupted (Ctrl-C or SIGTERM).
``status`` opens the store read-only and never changes it.
"""
from __future__ import annotations

import argparse
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_cli", "main", "DEFAULT_STORE", "Terminated"]

from ..cli import _positive_int  # the one positive-int argument parser of the CLI

DEFAULT_STORE = "decaylab.sqlite"


def add_cli(subparsers: Any) -> None:
    """Register the ``sweep`` and ``status`` subcommands on an ``add_subparsers()`` object; each
    sets ``handler``: ``args.handler(args)`` runs the command and returns its exit status."""
    from .runner import DEFAULT_STACK

    sweep = subparsers.add_parser(
        "sweep", help="run a sweep spec (TOML): train every run not yet in the store",
        description="Train every run of a sweep spec that the store does not have yet, several at once as stacked "
                    "models, writing each finished run at once. Killed and started again, it skips every "
                    "finished run; several processes may sweep one store together.")
    sweep.add_argument("spec", metavar="SPEC",
                       help="the sweep spec: a .toml file, or the name of a checked-in spec (e.g. demo)")
    sweep.add_argument("--store", default=DEFAULT_STORE, metavar="PATH",
                       help=f"the SQLite store the runs go to (default {DEFAULT_STORE}; created if missing or an "
                            "empty file; any other file must be a decaylab store)")
    how = sweep.add_mutually_exclusive_group()
    how.add_argument("--stack", type=_positive_int("--stack"), default=DEFAULT_STACK, metavar="K",
                     help=f"train up to K runs at once as one stacked model (default {DEFAULT_STACK})")
    how.add_argument("--no-stack", action="store_true", help="train one run at a time (same as --stack 1)")
    sweep.add_argument("--limit", type=_positive_int("--limit"), default=None, metavar="N",
                       help="train at most N runs, then stop (the rest stay pending)")
    sweep.add_argument("--processes", type=_positive_int("--processes"), default=1, metavar="N",
                       help="local backend: train in N processes on this store, one torch thread each (default 1)")
    sweep.add_argument("--retry-failed", action="store_true", help="train the runs that failed before again")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.add_argument("--yes", action="store_true",
                       help="confirm a large sweep (more runs than a sweep may start unasked; the spec may confirm "
                            "its own size with max_runs)")
    sweep.add_argument("--allow-spec-change", action="store_true",
                       help="accept a spec that labels runs the store holds under this sweep's name differently "
                            "(a renamed method): trained runs keep their labels, pending ones take the new ones")
    sweep.add_argument("--backend", choices=("local", "ray"), default="local",
                       help="where the runs train: in this process (local, the default) or as Ray tasks, one "
                            "group of stacked runs per task (ray; pip install 'decaylab[ray]'). The store "
                            "stays with this process either way")
    sweep.add_argument("--address", default=None, metavar="ADDR",
                       help="with --backend ray: the Ray cluster to join (auto, HOST:6379, ray://HOST:10001); "
                            "default: start a local Ray instance")
    sweep.add_argument("--workers", type=_positive_int("--workers"), default=None, metavar="N",
                       help="with --backend ray: groups in flight at once (default: as many as the cluster's "
                            "CPUs, or GPUs, hold)")
    sweep.set_defaults(handler=run_sweep_command)

    status = subparsers.add_parser(
        "status", help="show a store's progress: runs done/running/pending/failed, best so far, ETA",
        description="Show the progress of every sweep in a store, per method: runs done, running, pending and "
                    "failed, the best result so far, elapsed time and an ETA.")
    status.add_argument("store", metavar="STORE", help="the SQLite store (e.g. decaylab.sqlite)")
    status.add_argument("--sweep", default=None, metavar="NAME", help="only this sweep")
    status.set_defaults(handler=status_command)


def _error(command: str, message: Any) -> int:
    print(f"decaylab {command}: error: {message}", file=sys.stderr)
    return 2


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it stops as after Ctrl-C (and can say which)."""


def _stop_on_sigterm() -> Any:
    """Make SIGTERM (a cluster scheduler's or ``kill``'s) stop a sweep like Ctrl-C, so the runs in
    flight go back to pending at once (it raises :class:`Terminated`, a ``KeyboardInterrupt``);
    returns the previous handler (None if it could not be set)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise Terminated

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        return None


def stopped_how(error: KeyboardInterrupt) -> str:
    """``"interrupted by SIGTERM"`` or ``"interrupted"`` (Ctrl-C), for the message a command prints."""
    return "interrupted by SIGTERM" if isinstance(error, Terminated) else "interrupted"


def run_sweep_command(args: argparse.Namespace) -> int:
    from ..store import Store, describe_error
    from .runner import SweepAborted, run_sweep
    from .spec import find_spec, load_spec

    backend = getattr(args, "backend", "local")
    if backend != "ray":
        for option in ("address", "workers"):
            if getattr(args, option, None) is not None:
                return _error("sweep", f"--{option} needs --backend ray")
    elif getattr(args, "processes", 1) != 1:
        return _error("sweep", "--processes is for the local backend; with --backend ray use --workers")
    if getattr(args, "processes", 1) > 1 and args.limit is not None:
        return _error("sweep", "--processes N (N > 1) cannot be combined with --limit")
    try:
        spec = load_spec(find_spec(args.spec))
    except (FileNotFoundError, ValueError) as error:
        return _error("sweep", error)
    try:
        existed = Path(args.store).exists()
        store = Store(args.store)
    except (OSError, ValueError) as error:
        return _error("sweep", f"--store {args.store}: {error}")
    except sqlite3.DatabaseError as error:
        return _error("sweep", describe_error(args.store, error))
    stack = 1 if args.no_stack else args.stack
    previous = _stop_on_sigterm()
    where = "" if backend == "local" else f", on Ray ({args.address or 'a local instance'})"
    print(f"sweep {spec.name!r}: {len(spec)} runs ({len(spec.methods)} methods), stack {stack}, store {args.store}"
          f"{where}", file=sys.stderr)
    try:
        confirm = {"yes": getattr(args, "yes", False), "allow_spec_change": getattr(args, "allow_spec_change", False)}
        if backend == "ray":
            from .ray_backend import run_sweep_ray

            summary = run_sweep_ray(spec, store, address=args.address, workers=args.workers, stack=stack,
                                    limit=args.limit, retry_failed=args.retry_failed, progress=not args.quiet,
                                    **confirm)
        else:
            summary = run_sweep(spec, store, stack=stack, limit=args.limit, retry_failed=args.retry_failed,
                                progress=not args.quiet, processes=getattr(args, "processes", 1), **confirm)
    except ModuleNotFoundError as error:
        if backend != "ray" or not str(error).startswith("the Ray backend"):
            raise
        return _error("sweep", error)
    except ConnectionError as error:  # nothing answers at --address
        if backend != "ray":
            raise
        return _error("sweep", f"--address {args.address}: {error}")
    except KeyboardInterrupt as error:
        print(f"{stopped_how(error)}: the runs in flight went back to pending; every finished run is kept in "
              f"{args.store}. Run the same command again to go on.", file=sys.stderr)
        return 130
    except SweepAborted as error:
        print(f"decaylab sweep: stopped: {error}", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as error:  # a store damaged or made unwritable under the sweep
        return _error("sweep", describe_error(args.store, error))
    except ValueError as error:  # the runs cannot train here, a relabelling spec, an unconfirmed large sweep
        if not existed:  # refused before anything was registered: leave no empty store behind
            _remove_if_empty(store, args.store)
        return _error("sweep", error)
    finally:
        store.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(summary, file=sys.stderr)
    print(f"progress: decaylab status {args.store}", file=sys.stderr)
    return 1 if summary.left_failed else 0


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


def status_command(args: argparse.Namespace) -> int:
    from ..store import Store, describe_error
    from .status import format_status

    try:  # read-only: a reader never changes the file (not even to a store, not even its journal mode)
        store = Store(args.store, readonly=True)
    except (OSError, ValueError) as error:
        return _error("status", f"STORE: {error}")
    except sqlite3.DatabaseError as error:
        return _error("status", describe_error(args.store, error))
    try:
        print(format_status(store, args.sweep))
    except ValueError as error:  # a row a store cannot hold (an unknown status, a config that is not JSON)
        return _error("status", f"STORE {args.store}: {error}")
    except sqlite3.DatabaseError as error:
        return _error("status", describe_error(args.store, error))
    finally:
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m decaylab.sweep.cli {sweep,status} ...``"""
    parser = argparse.ArgumentParser(prog="decaylab")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
