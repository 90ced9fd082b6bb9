"""Moved to :mod:`decaylab.optim.schedules`; this import path keeps working (it is the same module)."""
import sys

from decaylab.optim import schedules as _module

sys.modules[__name__] = _module
