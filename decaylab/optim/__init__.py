"""The weight-decay optimizer family: a direction (Adam, SGD) × a decay rule.

See :mod:`decaylab.optim.rules` for every decay form and scale with its equation.
"""
from .optimizer import (
    SGD,
    SGDW,
    Adam,
    AdamC,
    AdamS,
    AdamW,
    CautiousAdamW,
    DecayOptimizer,
    DecayUnderflowWarning,
    EuclidProxAdam,
    ProxAdam,
)
from .rules import FORMS, SCALES, TARGETS

__all__ = [
    "Adam", "SGD", "AdamW", "ProxAdam", "EuclidProxAdam", "AdamS", "AdamC", "CautiousAdamW", "SGDW",
    "DecayOptimizer", "DecayUnderflowWarning", "FORMS", "SCALES", "TARGETS",
]
