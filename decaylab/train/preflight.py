"""What can be known about runs before any of them trains: whether their data loads, whether a batch
fits the dataset, a rough memory need against the machine's, and a rough wall time.

A sweep checks its runs with :func:`check_runs` before its first run trains, so that a spec whose
batch does not fit its dataset, or whose stacked models cannot fit in memory, is one clear error
at the start rather than a process that the out-of-memory killer ends again and again.

The estimates come from one forward pass of each kind of model on PyTorch's ``meta`` device (no
memory, no arithmetic): the bytes of every tensor that pass makes (an upper bound of what autograd
keeps for the backward pass) and its floating-point operations (``torch.utils.flop_counter``).
Memory is refused only above the machine's physical memory (or its cgroup limit), so a wrong
estimate errs toward letting a sweep start; the wall time assumes :data:`FLOPS_PER_CORE`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from decaylab.data import DataFileError, TensorData, TextData

from .config import TrainConfig
from .data import build_model, check_fits, load_data, steps_per_epoch

__all__ = ["check_runs", "Estimate", "estimate", "machine_memory", "FLOPS_PER_CORE"]

#: Floating-point operations per second one CPU core sustains in a sweep (measured: the demo's 360
#: stacked MNIST-1D MLP runs, 2.0e12 FLOPs of training, take about 45 s on 2 cores). Larger models
#: run faster per FLOP, so estimates err long.
FLOPS_PER_CORE = 2e10
_EVAL_EXAMPLES = 4096  # decaylab.train.loop evaluates this many examples per forward pass (all models)


@dataclass(frozen=True)
class Estimate:
    """One run's rough needs: ``bytes`` of memory for ``k`` stacked runs (data, weights, optimizer
    state and activations) and ``seconds`` of wall time for one run on this machine's CPUs."""

    bytes: int
    seconds: float
    k: int


class _Tally(TorchDispatchMode):
    """Sums the bytes of every tensor an operation makes (views share their base's memory: not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not getattr(func, "is_view", False):
            self.bytes += sum(t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


def _forward_on_meta(config: TrainConfig, data: TensorData | TextData, batch: int) -> tuple[int, float, int]:
    """(bytes made, FLOPs, parameters) of one forward pass of ``batch`` examples, on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(config, data)
        if isinstance(data, TextData):
            x = torch.zeros(batch, config.block_size, dtype=torch.long)
        else:
            x = torch.zeros(batch, *data.input_shape)
    params = sum(p.numel() for p in model.parameters())
    tally = _Tally()
    counter = FlopCounterMode(display=False)
    with counter, tally:
        model(x)
    return tally.bytes, float(counter.get_total_flops()), params


def estimate(config: TrainConfig, data: TensorData | TextData | None = None, *, k: int = 1) -> Estimate | None:
    """The rough memory of ``k`` stacked runs like ``config`` and the wall time of one; None when the
    model cannot run on the meta device (then nothing is estimated)."""
    data = load_data(config, data)
    try:
        made, flops, params = _forward_on_meta(config, data, config.batch_size)
    except Exception:  # an operation without a meta kernel: no estimate rather than a wrong one
        return None
    per_example = made / config.batch_size
    width = 2 if config.precision == "bf16" else 4
    moments = 1 if config.optimizer == "sgd" else 2
    copies = sum(callback.weight_copies for callback in config.parsed_callbacks)  # the EMA's average
    state = params * width * (2 + moments + copies)  # weights, gradients, moments, callbacks' copies
    if isinstance(data, TextData):
        data_bytes = sum(len(data.split(split)) for split in data.splits)
        evaluated = k * config.batch_size
    else:
        data_bytes = sum(t.numel() * t.element_size() for split in data.splits
                         for t in (getattr(data, f"x_{split}"), getattr(data, f"y_{split}")))
        evaluated = max(k * config.batch_size, _EVAL_EXAMPLES)
    activations = per_example * max(k * config.batch_size, evaluated)
    steps = config.steps if config.steps is not None else max(1, round(config.epochs * steps_per_epoch(config, data)))
    evals = (steps // config.eval_every if config.eval_every else 0) + 1
    if isinstance(data, TextData):
        eval_flops = 2 * config.lm_eval_batches * flops
    else:
        eval_flops = (data.n_val + data.n_test + min(config.train_eval_size, data.n_train)) * flops / config.batch_size
    seconds = (3 * flops * steps + evals * eval_flops) / (FLOPS_PER_CORE * _cores())
    return Estimate(bytes=int(data_bytes + k * state + activations), seconds=seconds, k=k)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_memory() -> int | None:
    """This machine's memory in bytes (physical, or the container's limit when lower); None if unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as f:
                limit = int(f.read().strip())
        except (OSError, ValueError):  # absent, or "max": no limit
            continue
        if limit > 0 and (total is None or limit < total):
            total = limit
    return total


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def _describe(config: TrainConfig) -> str:
    block = f", block_size {config.block_size}" if config.is_language_model else ""
    return f"{config.model} on {config.dataset} with batch_size {config.batch_size}{block}"


def check_runs(configs: Sequence[TrainConfig], *, stack: int = 1, processes: int = 1,
               memory: int | None = None, data_required: bool = True) -> float | None:
    """Check runs before any trains; return the rough wall time of them all on this machine, in
    seconds (None when no estimate could be made).

    Every dataset the runs name is loaded (a missing dataset is one error here, not one per run),
    every batch must fit its dataset (``batch_size`` examples, or for text ``batch_size ×
    block_size`` tokens), and ``processes`` groups of up to ``stack`` stacked runs must fit in
    ``memory`` bytes (default: :func:`machine_memory`) by the estimate of :func:`estimate`.
    ``data_required=False`` skips the runs of a dataset that does not load here (a Ray driver's
    workers may have data its own machine lacks).

    Raises:
        ValueError: the message names the dataset or the runs and what to change.
    """
    memory = machine_memory() if memory is None else memory
    groups: dict[tuple, list[TrainConfig]] = {}
    for config in configs:
        groups.setdefault(config.stack_key(), []).append(config)
    total = 0.0
    known = True
    for members in groups.values():
        config = members[0]
        try:
            data = load_data(config)
        except DataFileError as error:
            if not data_required:
                known = False
                continue
            raise ValueError(f"dataset {config.dataset!r}: {error}") from None
        check_fits(config, data)
        for c in {(c.batch_size, c.block_size): c for c in members}.values():
            steps_per_epoch(c, data)  # raises for a batch larger than the dataset
        k = min(stack, len(members))
        guess = estimate(config, data, k=k)
        if guess is None:
            known = False
            continue
        total += guess.seconds * len(members)
        need = guess.bytes * processes
        if memory is not None and need > memory:
            one = estimate(config, data, k=1)
            fits_alone = one is not None and one.bytes <= memory
            runs = f"{k} stacked runs" if k > 1 else "one run"
            where = f" in each of {processes} processes" if processes > 1 else ""
            what = f"{runs}{where} need{'s' if k == 1 and processes == 1 else ''} about {_gb(need)}"
            advice = ("lower --stack (or --processes)" if fits_alone
                      else "lower batch_size" + (" or block_size" if config.is_language_model else ""))
            raise ValueError(f"runs of {_describe(config)}: {what} (a rough estimate), more than this machine's "
                             f"{_gb(memory)} of memory; {advice}")
    return total if known and not math.isnan(total) else None
