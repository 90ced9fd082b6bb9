"""``decaylab reproduce NAME``: each claim of the weight-decay literature as a command that runs it.

See :mod:`decaylab.reproduce.core` for the framework; each reproduction lives in its own module and
registers itself on import.
"""
from .core import REGISTRY, SCALES, Reproduction, Verdict, describe, get, register  # noqa: I001

# Each module registers its reproduction on import, in the order of `decaylab reproduce --list`
# (one import line per module).
from . import decoupling  # noqa: E402,F401
from . import early_decay  # noqa: E402,F401
from . import scale_free  # noqa: E402,F401
from . import overtraining  # noqa: F401,E402  (registers itself)
from . import undertraining  # noqa: F401,E402  (registers itself)
from . import bf16  # noqa: F401,E402  (registers itself)
from . import timescale  # noqa: F401,E402  (registers itself)

__all__ = ["REGISTRY", "SCALES", "Reproduction", "Verdict", "describe", "get", "register"]
