"""``decaylab report STORE [--sweep NAME] [--out DIR]``: draw a sweep's report and print its table."""
from __future__ import annotations

import argparse
import sqlite3
from typing import Any

from ._args import FAILED, error, non_negative_float

__all__ = ["add_parser", "run"]


HELP = "draw the lr × λ heatmaps, curves and the HTML report of a sweep"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``report`` subcommand; returns its parser."""
    from ..report.build import DEFAULT_DELTA

    parser = subparsers.add_parser(
        "report",
        help=HELP,
        description=(
            "Read a sweep's finished runs from a run store and write report.html (self-contained), "
            "one PNG per figure and summary.json; print the method table."
        ),
    )
    parser.add_argument("store", metavar="STORE", help="the run store (SQLite file) a sweep wrote")
    parser.add_argument("--sweep", metavar="NAME", default=None,
                        help="which sweep of the store (default: the only one)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder (default: report-<sweep> beside the store)")
    parser.add_argument("--metric", default=None,
                        help="what the heatmaps show, lower is better (default: test_error = 1 − test_acc, "
                             "else val_loss or test_loss)")
    parser.add_argument("--delta", type=non_negative_float("--delta", finite=True), default=DEFAULT_DELTA,
                        help="tolerance of the good region in the metric's units "
                             f"(default {DEFAULT_DELTA}: 1 percentage point of test error)")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the report; print the table and where the files are. Bad input (a store that is missing,
    damaged or not a store, an output folder that cannot be written): one line on stderr, exit 2; a
    write that fails midway (a full disk): one line, exit 1."""
    from .._paths import check_output_dir, describe_os_error
    from ..report.build import build_report
    from ..store import describe_error

    try:
        if args.out is not None:
            check_output_dir(args.out, "--out")
        result = build_report(args.store, args.sweep, args.out, metric=args.metric, delta=args.delta)
    except (FileNotFoundError, ValueError) as problem:
        return error("report", problem)
    except sqlite3.DatabaseError as problem:  # a store damaged under the reader
        return error("report", describe_error(args.store, problem))
    except OSError as problem:
        where = f"--out {args.out}" if args.out is not None else "the report folder"
        return error("report", f"{where}: could not write the report ({describe_os_error(problem)}: "
                     f"{problem.filename})", FAILED)
    summary = result.summary
    print(f"sweep {summary['sweep']!r}: metric {summary['metric']}, good region within {summary['delta']:g}")
    print(result.table_text)
    print(f"report: {result.html_path}")
    print(f"figures: {len(result.png_paths)} PNG files in {result.html_path.parent}")
    return 0
