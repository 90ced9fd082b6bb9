"""The contract every instrument follows.

An instrument is a small object with a ``name``, an ``interval`` (sample every that many
optimizer steps) and a ``measure(ctx)`` method that returns ``{metric: value}``. Values are
floats, or tensors of shape ``(K,)`` when ``ctx.stacked`` is ``K`` (one value per stacked model,
models along dim 0 of every parameter). Instruments read the model and optimizer and never change
them. :class:`~decaylab.diagnostics.monitor.Monitor` calls them and turns values into records.

Instruments that need a step's *before* state (the angular update) declare ``needs_previous``;
the monitor then snapshots the parameters just before a sampled step.

Instruments that must see *every* step even though they report at an interval (the Adam buffer
mixing keeps shadow moving averages) set ``every_step = True``; the monitor then calls their
``before_step(ctx)`` and ``after_step(ctx)`` around every optimizer step. ``attach(ctx)`` and
``detach()`` are called once when a monitor takes the instrument on and when it closes.

An instrument with many metrics may return a :class:`Values` instead of a dict: the same mapping,
held as the rows of one tensor, which the monitor reads without splitting it into views.

:func:`step_hparams` reads a param group's learning rate, weight decay ``λ_t`` and decay scale
``s_t`` the way :mod:`decaylab.optim` applies them, for decaylab's and torch's optimizers alike.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class Context:
    """What an instrument sees when it is sampled (after ``optimizer.step()``)."""

    model: nn.Module | None
    optimizer: torch.optim.Optimizer | None
    step: int  # number of optimizer steps taken so far (1 after the first step)
    stacked: int | None = None  # K when parameters stack K models along dim 0
    previous: dict[int, Tensor] = field(default_factory=dict)  # id(param) -> value before this step
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the loss, given to Monitor.log
    names: dict[int, str] = field(default_factory=dict)  # id(param) -> its name in the model
    cache: dict[str, Any] = field(default_factory=dict)  # shared by the instruments of one sample

    def name_of(self, p: Tensor, fallback: str) -> str:
        """The parameter's name in the model (``model.named_parameters()``), else ``fallback``."""
        return self.names.get(id(p), fallback)

    def params(self) -> list[Tensor]:
        """The trainable parameters: the optimizer's if there is one, else the model's."""
        if self.optimizer is not None:
            return [p for g in self.optimizer.param_groups for p in g["params"]]
        return [p for p in self.model.parameters() if p.requires_grad]


class Instrument:
    """Base class: override ``measure``. ``interval`` counts optimizer steps."""

    name: str = "instrument"
    needs_previous: bool = False
    cheap: bool = True  # cheap instruments may run every step (benchmarks/instrument_overhead.py)
    every_step: bool = False  # the monitor calls before_step/after_step on every optimizer step

    def __init__(self, interval: int = 1):
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            raise ValueError(f"interval must be a positive int (optimizer steps between samples); got {interval!r}")
        self.interval = interval

    def due(self, step: int) -> bool:
        return step % self.interval == 0

    def measure(self, ctx: Context) -> dict[str, float | Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def attach(self, ctx: Context) -> None:
        """Called once when a monitor takes this instrument on (``ctx.step``: steps taken so far)."""

    def detach(self) -> None:
        """Called once when the monitor closes."""

    def before_step(self, ctx: Context) -> None:
        """With ``every_step``: called just before every optimizer step.

        ``ctx.step`` is the number the step will carry once taken (the one ``measure`` sees).
        """

    def after_step(self, ctx: Context) -> None:
        """With ``every_step``: called just after every optimizer step, before any ``measure``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(interval={self.interval})"


class Values(Mapping[str, Any]):
    """A ``{metric: value}`` mapping stored as one tensor: row ``i`` of ``values`` is metric
    ``names[i]`` (a number, or a ``(K,)`` row when stacked), plus an optional ``extra`` dict.

    >>> v = Values(["a", "b"], torch.tensor([1.0, 2.0]), extra={"c": 3.0})
    >>> dict(v)
    {'a': tensor(1.), 'b': tensor(2.), 'c': 3.0}
    """

    def __init__(self, names: list[str], values: Tensor, extra: dict[str, Any] | None = None):
        if len(names) != values.shape[0]:
            raise ValueError(f"Values: {len(names)} names for {values.shape[0]} rows")
        self.names, self.values, self.extra = names, values, dict(extra or {})
        self._index: dict[str, int] | None = None

    def __getitem__(self, name: str) -> Any:
        if self._index is None:
            self._index = {n: i for i, n in enumerate(self.names)}
        if name in self._index:
            return self.values[self._index[name]]
        return self.extra[name]

    def __iter__(self) -> Iterator[str]:
        yield from self.names
        yield from self.extra

    def __len__(self) -> int:
        return len(self.names) + len(self.extra)


def per_model_sum(x: Tensor, stacked: int | None) -> Tensor:
    """Sum over all elements, or over all but dim 0 when ``stacked`` (one value per model)."""
    if stacked:
        return x.reshape(x.shape[0], -1).sum(1)
    return x.sum()


def step_hparams(group: dict[str, Any], *, taken: bool = True) -> dict[str, Any]:
    """``lr``, ``lam`` (λ_t) and ``s`` (s_t) of a param group, as the optimizer applies them.

    ``taken=True`` (after ``optimizer.step()``): the values of the step just taken;
    ``taken=False`` (in a pre-step hook): of the step about to be taken. A ``weight_decay``
    schedule is called with the 0-based index of that step (decaylab keeps the count in
    ``group["step"]``). ``s`` follows ``group["decay_scale"]`` like
    :func:`decaylab.optim.rules.decay_scale`; groups without that key (torch's optimizers) use
    torch's convention ``s_t = lr_t``. Values are numbers or tensors of shape ``(K,)``.
    """
    from decaylab.optim.rules import decay_scale  # diagnostics read the optimizers, never the reverse
    from decaylab.optim.torch_compat import MAX_LR

    lr = group["lr"]
    wd = group.get("weight_decay", 0.0)
    if callable(wd) and not isinstance(wd, Tensor):
        index = int(group.get("step", 0)) - (1 if taken else 0)
        wd = wd(max(index, 0))
    scale = group.get("decay_scale", "lr")
    s = decay_scale(scale, lr, group.get(MAX_LR, lr)) if scale != "lr" else lr
    return {"lr": lr, "lam": wd, "s": s}
