"""Moved to :mod:`decaylab.optim.groups`; this import path keeps working (it is the same module)."""
import sys

from decaylab.optim import groups as _module

sys.modules[__name__] = _module
