"""Training: one loop for one model (:func:`train`) and for K models stacked as one
(:func:`train_stacked`), configured by a :class:`TrainConfig` and answering a :class:`RunResult`.

>>> from decaylab.train import TrainConfig, train
>>> result = train(TrainConfig(model="mlp", dataset="mnist1d", lr=3e-3, weight_decay=0.1, steps=20))  # doctest: +SKIP
>>> sorted(result.final)  # doctest: +SKIP
['steps', 'test_acc', 'test_loss', 'train_acc', 'train_loss', 'wall_s', 'weight_norm']

Modules: :mod:`~decaylab.train.config` (the config, its schema, and the result),
:mod:`~decaylab.train.callbacks` (the knobs beyond the loop, by name), :mod:`~decaylab.train.schedules`
(lr multipliers, weight-decay windows), :mod:`~decaylab.train.data` (data order, evaluation
sets), :mod:`~decaylab.train.engines` (one model or K stacked), :mod:`~decaylab.train.loop`
(the loop, checkpoints, progress), :mod:`~decaylab.train.preflight` (what can be checked and
estimated before a run trains).
"""
from .callbacks import CALLBACKS, Callback
from .config import (
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    RunResult,
    TrainConfig,
    load_config,
    per_model_fields,
)
from .loop import stack_groups, total_steps, train, train_stacked
from .preflight import check_runs
from .schedules import DecayWindows, LRSchedule, lr_schedule

__all__ = [
    "TrainConfig", "RunResult", "load_config", "per_model_fields", "train", "train_stacked", "total_steps",
    "stack_groups", "check_runs",
    "LRSchedule", "DecayWindows", "lr_schedule", "CALLBACKS", "Callback",
    "OPTIMIZERS", "SCHEDULES", "PRECISIONS",
]
