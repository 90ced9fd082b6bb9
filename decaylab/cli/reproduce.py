"""``decaylab reproduce``: run a claim of the weight-decay literature and say whether it held.

::

    decaylab reproduce NAME [--scale small|paper] [--store PATH] [--out DIR] [--stack K] [--quiet]
    decaylab reproduce all [--scale ...] [--store DIR] [--out DIR] ...
    decaylab reproduce --list
    decaylab reproduce --table [PATH ...] [--copy-to DIR] [--update README.md]

``NAME`` runs one reproduction (its sweep, the analysis, the report) and prints its verdict line,
the wall time and where the report is. A second call skips the finished runs of the store.
``all`` runs every registered reproduction in turn; there ``--store`` and ``--out`` name folders
(each reproduction gets ``reproduce-NAME[-SCALE].sqlite`` and ``NAME/`` in them). The exit status
``--table`` prints the table of verdicts from ``verdict.json`` files (or folders holding them;
default ``docs/verdicts``), keeps copies with ``--copy-to`` and rewrites the README's generated block
with ``--update`` (:mod:`decaylab.reproduce.verdicts`). The exit status
is 0 whatever the verdicts are (a claim that did not hold is a result), 2 for bad input, 130 when
interrupted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._args import INTERRUPTED, error, positive_int, stop_on_sigterm

__all__ = ["add_parser", "run"]


HELP = "run a claim of the weight-decay literature and say whether it held"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``reproduce`` on an ``add_subparsers()`` object; ``args.handler(args)`` runs it."""
    from ..reproduce.core import SCALES

    parser = subparsers.add_parser(
        "reproduce", help=HELP,
        description="Run a reproduction: its checked-in sweep (small: embedded data, 2 CPU cores, minutes; "
                    "paper: the paper's setup, for a GPU or a cluster), then a numeric verdict with its margin "
                    "over seeds, and the report. 'decaylab reproduce --list' describes them.")
    parser.add_argument("name", nargs="?", metavar="NAME", help="a reproduction (see --list), or 'all' (every claim)")
    parser.add_argument("--list", action="store_true", help="describe every reproduction and exit")
    parser.add_argument("--table", nargs="*", default=None, metavar="PATH",
                        help="print the table of verdicts from verdict.json files or folders holding them "
                             "(default docs/verdicts) and exit")
    parser.add_argument("--copy-to", default=None, metavar="DIR",
                        help="with --table: keep a copy of each verdict as DIR/NAME.json")
    parser.add_argument("--update", default=None, metavar="FILE",
                        help="with --table: rewrite FILE's generated block of verdicts (e.g. README.md)")
    parser.add_argument("--scale", default="small", choices=SCALES,
                        help="small (default: minutes on a laptop) or paper (the paper's dataset, model, epochs)")
    parser.add_argument("--store", default=None, metavar="PATH",
                        help="the run store (default runs/reproduce-NAME[-paper].sqlite); with 'all', a folder")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="the report's folder (default report-<sweep> beside the store); with 'all', a "
                             "folder that gets one subfolder per reproduction")
    parser.add_argument("--stack", type=positive_int("--stack"), default=None, metavar="K",
                        help="train up to K runs at once as one stacked model (default: the sweep runner's)")
    parser.add_argument("--processes", type=positive_int("--processes"), default=None, metavar="N",
                        help="training processes side by side, one torch thread each (default: one per core, up to 4)")
    parser.add_argument("--retry-failed", action="store_true", help="train the runs that failed before again")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..reproduce import REGISTRY, claims, describe, get

    if args.list:
        print(describe())
        return 0
    if args.table is not None:
        return _table(args)
    if args.copy_to is not None or args.update is not None:
        return error("reproduce", "--copy-to and --update go with --table")
    if args.name is None:
        return error("reproduce", f"NAME is required: one of {', '.join(REGISTRY)}, or 'all' (--list describes "
                                  "them)")
    try:
        names = claims() if args.name == "all" else [get(args.name).name]  # all: every entry with a claim
    except ValueError as problem:
        return error("reproduce", problem)
    for name in names:  # every spec must load before anything trains
        try:
            get(name).spec(args.scale)
        except (FileNotFoundError, ValueError) as problem:
            return error("reproduce", f"{name}: {problem}")
    several = args.name == "all"
    verdicts = []
    try:
        with stop_on_sigterm():
            for name in names:
                store, out = args.store, args.out
                if several:
                    store = Path(store) / get(name).default_store(args.scale).name if store else None
                    out = Path(out) / name if out else None
                print(f"reproduce {name} ({args.scale}): {get(name).title}", file=sys.stderr)
                verdict = get(name).run(scale=args.scale, store=store, out=out, stack=args.stack,
                                        progress=not args.quiet, processes=args.processes,
                                        retry_failed=args.retry_failed)
                verdicts.append(verdict)
                print(verdict.line)
                print(f"  wall time {verdict.wall_s:.0f} s; report: {verdict.report}")
    except KeyboardInterrupt:
        print("interrupted: every finished run is kept in the store; run the same command again to go on.",
              file=sys.stderr)
        return INTERRUPTED
    except ValueError as problem:
        return error("reproduce", problem)
    if several:
        print()
        for verdict in verdicts:
            print(f"{verdict.status:>12}  {verdict.name}  ({verdict.wall_s:.0f} s)")
    return 0


def _table(args: argparse.Namespace) -> int:
    from ..reproduce import verdicts

    try:
        records = verdicts.read(args.table or ["docs/verdicts"])
        if args.copy_to is not None:
            verdicts.copy_to(records, args.copy_to)
        block = verdicts.render(records)
        if args.update is not None:
            path = Path(args.update)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as problem:
                raise ValueError(f"--update {path}: cannot read it ({problem.strerror})") from None
            path.write_text(verdicts.update(text, block, where=f"--update {path}"), encoding="utf-8")
    except ValueError as problem:
        return error("reproduce", problem)
    print(block, end="")
    return 0
