"""``decaylab quickstart``: a one-minute tour of the optimizer family on scikit-learn's digits."""
from __future__ import annotations

import argparse
from typing import Any

from ._args import non_negative_float, positive_int

HELP = "train an MLP on scikit-learn's digits with every decay form and print a table"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "quickstart",
        help=HELP,
        description="Train an MLP on scikit-learn's digits (shipped offline) with each optimizer of the family.",
    )
    parser.add_argument("--seeds", type=positive_int("--seeds"), default=3, help="seeds per method (default 3)")
    parser.add_argument("--epochs", type=positive_int("--epochs"), default=20, help="epochs per run (default 20)")
    parser.add_argument("--batch-size", type=positive_int("--batch-size"), default=64,
                        help="minibatch size (default 64)")
    parser.add_argument("--weight-decay", type=non_negative_float("--weight-decay"), default=0.5,
                        help="λ in torch's convention (default 0.5); converted for the other conventions")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from .. import quickstart

    quickstart.run(seeds=args.seeds, epochs=args.epochs, batch_size=args.batch_size, weight_decay=args.weight_decay)
    return 0
