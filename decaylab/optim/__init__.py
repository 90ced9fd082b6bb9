"""The weight-decay optimizer family: a direction (Adam, SGD) × a decay rule.

Rules (:mod:`~decaylab.optim.rules`, registry :data:`RULES`) and directions
(:mod:`~decaylab.optim.directions`, registry :data:`DIRECTIONS`) are objects; :class:`Adam` and
:class:`SGD` combine them, the named optimizers are presets. Equations and sources: ``docs/methods.md``.
"""
from .directions import DIRECTIONS, Direction
from .directions.adafactor import Adafactor
from .directions.adam import Adam
from .directions.lion import Lion
from .directions.muon import Muon
from .directions.schedule_free import ScheduleFreeAdamW
from .directions.sgd import SGD
from .optimizer import OPTIMIZERS, DecayOptimizer, DecayUnderflowWarning, StateUnderflowWarning
from .precision import PrecisionOverflowWarning
from .presets import SGDW, AdamC, AdamS, AdamW, CautiousAdamW, EuclidProxAdam, ProxAdam
from .rules import FORMS, RULES, SCALES, TARGETS, DecayRule, register
from .torch_compat import CheckpointFormWarning

__all__ = [
    "Adam", "SGD", "Lion", "Muon", "Adafactor", "ScheduleFreeAdamW",
    "AdamW", "ProxAdam", "EuclidProxAdam", "AdamS", "AdamC", "CautiousAdamW", "SGDW",
    "DecayOptimizer", "DecayUnderflowWarning", "StateUnderflowWarning", "PrecisionOverflowWarning",
    "CheckpointFormWarning", "FORMS", "SCALES", "TARGETS",
    "RULES", "DecayRule", "register", "DIRECTIONS", "Direction", "OPTIMIZERS",
]
