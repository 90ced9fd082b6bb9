"""What every ``decaylab`` command shares: argument types that name the option in their error, the
one-line error and its exit status, and SIGTERM stopping a command the way Ctrl-C does.

Exit statuses: 0 done; 1 the work stopped or left something failed (a write that failed midway, runs
left failed); 2 bad input, found before any work (one line naming the argument); 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["BAD_INPUT", "FAILED", "INTERRUPTED", "Terminated", "error", "non_negative_float", "non_negative_int",
           "positive_int", "stop_on_sigterm", "stopped_how"]

FAILED, BAD_INPUT, INTERRUPTED = 1, 2, 130


def error(command: str, message: Any, status: int = BAD_INPUT) -> int:
    """Print ``decaylab COMMAND: error: MESSAGE`` on stderr (one line) and return ``status``."""
    print(f"decaylab {command}: error: {message}", file=sys.stderr)
    return status


def _integer(name: str, low: int) -> Callable[[str], int]:
    what = "a positive integer" if low == 1 else f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {value}")
        return value

    return parse


def positive_int(name: str) -> Callable[[str], int]:
    """An argparse type: an integer >= 1, its error naming ``name``."""
    return _integer(name, 1)


def non_negative_int(name: str) -> Callable[[str], int]:
    """An argparse type: an integer >= 0, its error naming ``name``."""
    return _integer(name, 0)


def non_negative_float(name: str, *, finite: bool = False) -> Callable[[str], float]:
    """An argparse type: a number >= 0 (``finite``: and not inf), its error naming ``name``."""
    what = "a finite number >= 0" if finite else "a number >= 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {text!r}") from None
        if not value >= 0 or (finite and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {value}")
        return value

    return parse


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it stops as after Ctrl-C (and can say which)."""


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM (a cluster scheduler's or ``kill``'s) raises :class:`Terminated`, a
    ``KeyboardInterrupt``: a command stops as after Ctrl-C, its runs in flight going back to pending.
    The previous handler is restored afterwards (nothing changes outside the main thread)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def stopped_how(stop: KeyboardInterrupt) -> str:
    """``"interrupted by SIGTERM"`` or ``"interrupted"`` (Ctrl-C), for the message a command prints."""
    return "interrupted by SIGTERM" if isinstance(stop, Terminated) else "interrupted"
