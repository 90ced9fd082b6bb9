"""``decaylab demo``: the main job, an lr × λ sweep of five decay treatments on MNIST-1D and its report."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ._args import FAILED, INTERRUPTED, error, positive_int, stop_on_sigterm, stopped_how

HELP = "the main job: lr × λ sweep of five decay treatments on MNIST-1D, with the report"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help=HELP,
        description="Sweep Adam+L2, AdamW (torch and paper conventions), ProxAdam and AdamP over lr × λ grids with "
        "3 seeds on MNIST-1D (an MLP with BatchNorm), then print the best accuracy per method and how its best λ moves "
        "with lr (the slope of log λ* against log lr, with its spread over seeds), and write the report.",
    )
    parser.add_argument("--store", default="runs/demo.sqlite", help="the SQLite run store (default runs/demo.sqlite)")
    parser.add_argument("--out", default=None, help="the report's folder (default: next to the store)")
    parser.add_argument("--stack", type=positive_int("--stack"), default=48, help="runs trained together (default 48)")
    parser.add_argument("--processes", type=positive_int("--processes"), default=None,
                        help="training processes side by side, one torch thread each (default: one per core, up to 4)")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """One line and exit 2 for bad input (a store or folder that cannot be used, found before training),
    1 when the sweep stops or the report cannot be written, 130 when interrupted."""
    import sqlite3

    from .. import demo
    from .._paths import describe_os_error
    from ..store import describe_error
    from ..sweep import SweepAborted

    try:
        with stop_on_sigterm():
            demo.run(store=args.store, out=args.out, stack=args.stack, processes=args.processes)
    except KeyboardInterrupt as stop:
        print(f"{stopped_how(stop)}: every finished run is kept in {args.store}; run the same command again to go "
              "on.", file=sys.stderr)
        return INTERRUPTED
    except SweepAborted as problem:
        return error("demo", problem, FAILED)
    except sqlite3.DatabaseError as problem:
        return error("demo", describe_error(args.store, problem))
    except ValueError as problem:
        return error("demo", problem)
    except OSError as problem:  # a write that failed midway (a full disk): the runs stay in the store
        return error("demo", f"{describe_os_error(problem)}: {problem.filename or problem}; every finished run is "
                     f"kept in {args.store}", FAILED)
    return 0
