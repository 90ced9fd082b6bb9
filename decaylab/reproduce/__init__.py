"""``decaylab reproduce NAME``: each claim of the weight-decay literature as a command that runs it.

See :mod:`decaylab.reproduce.core` for the framework and :mod:`decaylab.reproduce.stats` for the
statistics. Each reproduction is one module of this package (and its specs in ``specs/``); they are
found and registered on import (:func:`~decaylab.reproduce.core.discover`), in the order of their names.
The demo (``decaylab demo``) is one of them, without a claim.
"""
from .core import REGISTRY, SCALES, Reproduction, Verdict, claims, describe, discover, get, register

discover()

__all__ = ["REGISTRY", "SCALES", "Reproduction", "Verdict", "claims", "describe", "get", "register"]
