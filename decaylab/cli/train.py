"""``decaylab train [CONFIG.toml] [--FIELD VALUE ...]``: train one run; data-parallel under ``torchrun``.

::

    decaylab train run.toml --lr 3e-3 --weight_decay 0.1 --out result.json
    torchrun --nproc_per_node 2 -m decaylab.cli train run.toml --steps 500 --checkpoint-dir ckpt

Exit status 0; 2 for bad input, found before training (a field or option, a config file that is not
UTF-8 TOML, an ``--out`` or ``--checkpoint-dir`` that cannot be written, a checkpoint that cannot be
loaded on ``--resume``, a dataset that is missing); 1 when a write fails after training has begun (a
full disk: the result then goes to stdout); 130 when interrupted (Ctrl-C or SIGTERM). Each is one
line that names the cause.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._args import BAD_INPUT, FAILED, INTERRUPTED, non_negative_int, stop_on_sigterm, stopped_how

PROG = "decaylab train"
HELP = "train one run (a TOML config, --field value overrides); data-parallel under torchrun"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train``: a config file, then one option per TrainConfig field (``--weight_decay`` and
    ``--weight-decay`` alike), read from the fields' own metadata; and where results go."""
    import dataclasses

    from ..train.config import TrainConfig

    parser = subparsers.add_parser(
        "train", help=HELP,
        description="Train one run of a TrainConfig: fields from a TOML file, then --field value overrides. "
                    "Under 'torchrun --nproc_per_node N' the N processes train it data-parallel (DDP), each on "
                    "1/N of every batch; rank 0 writes the result and the checkpoints.")
    parser.add_argument("config", nargs="?", default=None, metavar="CONFIG.toml",
                        help="a TOML file of TrainConfig fields (default: TrainConfig's defaults)")
    parser.add_argument("--out", default=None, metavar="PATH", help="write the RunResult here as JSON (rank 0)")
    parser.add_argument("--checkpoint-dir", default=None, metavar="DIR", help="checkpoints go here (rank 0)")
    parser.add_argument("--checkpoint-every", type=non_negative_int("--checkpoint-every"), default=0, metavar="N",
                        help="steps between checkpoints (default 0: at the end only)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's checkpoint if there is one")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    fields = parser.add_argument_group("TrainConfig fields", "override the config file's values; each is checked "
                                                             "as the config checks it")
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata["meta"]
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        fields.add_argument(*flags, dest=f"{_FIELD}{f.name}", default=None, metavar=meta.kind.upper(),
                            help=f"{meta.help}: {meta.allowed()} (default {f.default!r})".replace("%", "%%"))
    parser.set_defaults(handler=run, unrecognized=_unrecognized)
    return parser


_FIELD = "field:"  # the dest prefix of a field's option (not a valid identifier: no clash with the others)


def _unrecognized(extra: list[str]) -> str:
    """The one-line error for arguments that are not options: an unknown field names its closest match."""
    from ..train.config import unknown_key

    flag = next((a for a in extra if a.startswith("--")), None)
    if flag is None:
        return f"unrecognized arguments: {' '.join(extra)}"
    return str(unknown_key(flag.split("=")[0][2:].replace("-", "_"), "the command line"))


def run(args: argparse.Namespace) -> int:
    """Train ``args.config`` with the field overrides, write the result (rank 0)."""
    from .._paths import check_output_dir, check_output_file, describe_os_error
    from ..data import DataFileError
    from ..store import divergence, json_safe
    from ..train.config import load_config, parse_value
    from ..train.distributed import train_distributed, world

    def error(message: object, status: int = BAD_INPUT) -> int:
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return status

    writes = world()[0] == 0
    try:  # everything that can be found out before training, so that no run is trained for nothing
        overrides = {name[len(_FIELD):]: parse_value(name[len(_FIELD):], text) for name, text in vars(args).items()
                     if name.startswith(_FIELD) and text is not None}
        config = load_config(args.config, overrides)
        if writes and args.out is not None:
            check_output_file(args.out, "--out")
        if args.checkpoint_dir is not None:
            check_output_dir(args.checkpoint_dir, "--checkpoint-dir")
    except ValueError as problem:
        return error(problem)
    steps = [0]
    try:
        with stop_on_sigterm():
            result = train_distributed(config, progress=not args.quiet, checkpoint_dir=args.checkpoint_dir,
                                       checkpoint_every=args.checkpoint_every, resume=args.resume,
                                       on_step=lambda step: steps.__setitem__(0, step))
    except KeyboardInterrupt as stop:
        saved = (f"--resume with --checkpoint-dir {args.checkpoint_dir} goes on from its last checkpoint"
                 if args.checkpoint_dir is not None else "nothing was saved (--checkpoint-dir keeps checkpoints)")
        print(f"{PROG}: {stopped_how(stop)}: stopped at step {steps[0]}; {saved}", file=sys.stderr)
        return INTERRUPTED
    except DataFileError as problem:  # a dataset that is missing or damaged (and could not be downloaded)
        return error(f"dataset {config.dataset!r}: {problem}")
    except ValueError as problem:  # also a checkpoint that cannot be loaded (loop._load_checkpoint), before training
        return error(problem)
    except OSError as problem:  # a checkpoint that could not be written (a full disk)
        return error(f"{describe_os_error(problem)}: {problem.filename or problem}", FAILED)
    if writes:
        payload = result.to_dict()
        reason = divergence(payload["final"])
        if reason:  # as a sweep stores it: a diverged run's metrics mean nothing
            payload["final"] = dict.fromkeys(payload["final"])
        payload["diverged"] = reason
        text = json.dumps(json_safe(payload), indent=1, allow_nan=False)  # null, never a bare NaN
        if args.out is not None:
            try:
                Path(args.out).write_text(text)
            except OSError as problem:  # keep the result: it goes to stdout
                print(text)
                return error(f"--out {args.out}: could not write the result ({describe_os_error(problem)}); it "
                             "was printed to stdout instead", FAILED)
        final = " ".join(f"{k}={v:.4g}" for k, v in result.final.items())
        print(f"{PROG}: {config.model}/{config.dataset} {final}" + (f" (diverged: {reason})" if reason else ""))
    return 0
