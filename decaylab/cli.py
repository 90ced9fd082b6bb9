"""The ``decaylab`` command."""
from __future__ import annotations

import argparse
import sys


def _positive_int(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {value}")
        return value

    return parse


def _non_negative_float(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number >= 0, got {text!r}") from None
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a number >= 0, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="decaylab", description="Weight decay done right: optimizers, instruments, experiments."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    quick = sub.add_parser(
        "quickstart",
        help="train an MLP on scikit-learn's digits with every decay form and print a table",
        description="Train an MLP on scikit-learn's digits (shipped offline) with each optimizer of the family.",
    )
    quick.add_argument("--seeds", type=_positive_int("--seeds"), default=3, help="seeds per method (default 3)")
    quick.add_argument("--epochs", type=_positive_int("--epochs"), default=20, help="epochs per run (default 20)")
    quick.add_argument(
        "--batch-size", type=_positive_int("--batch-size"), default=64, help="minibatch size (default 64)"
    )
    quick.add_argument(
        "--weight-decay", type=_non_negative_float("--weight-decay"), default=0.5,
        help="λ in torch's convention (default 0.5); converted for the other conventions",
    )
    demo = sub.add_parser(
        "demo",
        help="the main job: lr × λ sweep of five decay treatments on MNIST-1D, with the report",
        description="Sweep Adam+L2, AdamW (torch and paper conventions), ProxAdam and AdamP over a 6×6 lr × λ grid "
        "with 2 seeds on MNIST-1D, then print the best accuracy and separability per method and write the report.",
    )
    demo.add_argument("--store", default="runs/demo.sqlite", help="the SQLite run store (default runs/demo.sqlite)")
    demo.add_argument("--out", default=None, help="the report's folder (default: next to the store)")
    demo.add_argument("--stack", type=_positive_int("--stack"), default=24, help="runs trained together (default 24)")
    demo.add_argument("--processes", type=_positive_int("--processes"), default=None,
                      help="training processes side by side, one torch thread each (default: one per core, up to 4)")
    from .advise import add_cli as add_advise_cli
    from .report.cli import add_cli as add_report_cli
    from .reproduce.cli import add_cli as add_reproduce_cli
    from .sweep.cli import add_cli as add_sweep_cli
    from .train.distributed import add_cli as add_train_cli

    add_train_cli(sub)
    add_sweep_cli(sub)
    add_report_cli(sub)
    add_reproduce_cli(sub)
    add_advise_cli(sub)
    return parser


def _demo(args: argparse.Namespace) -> int:
    """``decaylab demo``: one line and exit 2 for bad input (a store or folder that cannot be used, found
    before training), 1 when the report cannot be written, 130 when interrupted."""
    import sqlite3

    from . import demo
    from ._paths import describe_os_error
    from .store import describe_error
    from .sweep.cli import _stop_on_sigterm, stopped_how
    from .sweep.runner import SweepAborted

    def error(message: object, status: int = 2) -> int:
        print(f"decaylab demo: error: {message}", file=sys.stderr)
        return status

    previous = _stop_on_sigterm()
    try:
        demo.run(store=args.store, out=args.out, stack=args.stack, processes=args.processes)
    except KeyboardInterrupt as stop:
        print(f"{stopped_how(stop)}: every finished run is kept in {args.store}; run the same command again to go "
              "on.", file=sys.stderr)
        return 130
    except SweepAborted as problem:
        return error(problem, 1)
    except sqlite3.DatabaseError as problem:
        return error(describe_error(args.store, problem))
    except ValueError as problem:
        return error(problem)
    except OSError as problem:  # a write that failed midway (a full disk): the runs stay in the store
        return error(f"{describe_os_error(problem)}: {problem.filename or problem}; every finished run is kept in "
                     f"{args.store}", 1)
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # its '--field value' overrides are free-form: decaylab.train.distributed parses them
        from .train.distributed import main as train_main

        return train_main(argv[1:], prog="decaylab train")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(f"decaylab {__version__}")
        return 0
    if args.command == "quickstart":
        from . import quickstart

        quickstart.run(seeds=args.seeds, epochs=args.epochs, batch_size=args.batch_size, weight_decay=args.weight_decay)
        return 0
    if args.command == "demo":
        return _demo(args)
    if getattr(args, "handler", None) is not None:
        return args.handler(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
