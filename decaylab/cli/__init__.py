"""The ``decaylab`` command: one module per subcommand, each with ``HELP`` (its line in ``decaylab
--help``) and ``add_parser(subparsers)`` that registers it and sets ``handler`` (``args.handler(args)``
runs it and returns the exit status).

The library never imports this package (tested: ``tests/test_cli_layout.py``); a command module
imports the library it drives, lazily, so ``decaylab status`` needs no torch. ``python -m
decaylab.cli COMMAND ...`` is ``decaylab COMMAND ...`` (``torchrun ... -m decaylab.cli train``).
Shared argument types, exit statuses and SIGTERM handling: :mod:`decaylab.cli._args`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ._args import error

__all__ = ["COMMANDS", "build_parser", "main"]

#: The subcommands in the order ``decaylab --help`` lists them; each is the module of that name here.
COMMANDS = ("quickstart", "demo", "train", "sweep", "status", "report", "reproduce", "advise")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``decaylab`` parser. With ``command``, only that subcommand gets its full parser, the others a
    line of help (building some parsers imports torch: ``train``'s options are TrainConfig's fields)."""
    parser = argparse.ArgumentParser(
        prog="decaylab", description="Weight decay done right: optimizers, instruments, experiments."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        if command is None or command == name:
            module.add_parser(sub)
        else:
            sub.add_parser(name, help=module.HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(next((a for a in argv if a in COMMANDS), None))
    args, extra = parser.parse_known_args(argv)
    if extra:  # one line (a command may say more: train names the field closest to an unknown --field)
        explain = getattr(args, "unrecognized", None)
        return error(args.command or "", explain(extra) if explain else f"unrecognized arguments: {' '.join(extra)}")
    if args.version:
        from .. import __version__

        print(f"decaylab {__version__}")
        return 0
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    return args.handler(args)
