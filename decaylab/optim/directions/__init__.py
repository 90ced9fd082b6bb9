"""Update directions: the part of an optimizer that does not know about weight decay.

Each module of this package is one direction — its math as small pure functions (on a tensor or a
:class:`~decaylab.optim.tensorlist.TensorList` alike), its :class:`Direction` object and its optimizer
class — and registers itself when the package is imported. Adding a direction is adding a module.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import DIRECTIONS, Direction, register, step_dtype

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

from .adam import (  # noqa: E402 -- the pure functions, as the tests and users import them
    adam_bias_corrections,
    adam_direction,
    adam_direction_corrected,
    adam_moments,
    adam_vhat,
)
from .sgd import sgd_direction, sgd_momentum  # noqa: E402

__all__ = ["DIRECTIONS", "Direction", "register", "step_dtype", "adam_moments", "adam_bias_corrections",
           "adam_direction", "adam_direction_corrected", "adam_vhat", "sgd_momentum", "sgd_direction"]
