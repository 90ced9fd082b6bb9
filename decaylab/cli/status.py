"""``decaylab status STORE [--sweep NAME]``: a store's progress (opened read-only, never changed)."""
from __future__ import annotations

import argparse
import sqlite3
from typing import Any

from ._args import error

HELP = "show a store's progress: runs done/running/pending/failed, best so far, ETA"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "status", help=HELP,
        description="Show the progress of every sweep in a store, per method: runs done, running, pending and "
                    "failed, the best result so far, elapsed time and an ETA.")
    parser.add_argument("store", metavar="STORE", help="the SQLite store (e.g. decaylab.sqlite)")
    parser.add_argument("--sweep", default=None, metavar="NAME", help="only this sweep")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..store import Store, describe_error
    from ..sweep.status import format_status

    try:  # read-only: a reader never changes the file (not even to a store, not even its journal mode)
        store = Store(args.store, readonly=True)
    except (OSError, ValueError) as problem:
        return error("status", f"STORE: {problem}")
    except sqlite3.DatabaseError as problem:
        return error("status", describe_error(args.store, problem))
    try:
        print(format_status(store, args.sweep))
    except ValueError as problem:  # a row a store cannot hold (an unknown status, a config that is not JSON)
        return error("status", f"STORE {args.store}: {problem}")
    except sqlite3.DatabaseError as problem:
        return error("status", describe_error(args.store, problem))
    finally:
        store.close()
    return 0
