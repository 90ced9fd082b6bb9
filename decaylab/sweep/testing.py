"""A deterministic stand-in for :mod:`decaylab.train`, for testing sweeps without training.

:class:`FakeTrainer` follows the training contract (``train(config, *, data=None, progress=None)
-> RunResult`` and ``train_stacked(configs, ...) -> list[RunResult]``) and returns made-up but
deterministic metrics in a few microseconds, optionally sleeping to imitate work, logging every
run it trains to a file (to count trainer calls across processes), or failing on chosen configs.
It is picklable, so it can be handed to processes started with ``spawn``.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Config:
...     lr: float = 0.01
...     weight_decay: float = 0.1
...     seed: int = 0
...     def key(self): return f"{self.lr}-{self.weight_decay}-{self.seed}"
>>> result = FakeTrainer().train(Config())
>>> sorted(result.final)
['test_acc', 'test_loss', 'train_acc', 'train_loss', 'val_acc', 'val_loss', 'wall_s', 'weight_norm']
>>> FakeTrainer().train(Config()).final == result.final
True
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FakeTrainer", "FakeResult", "fake_metrics"]


@dataclass
class FakeResult:
    """The shape of :class:`decaylab.train.RunResult`: ``config``, ``final``, ``curves``."""

    config: Any
    final: dict[str, float]
    curves: list[dict] = field(default_factory=list)


def fake_metrics(config: Any) -> dict[str, float]:
    """Deterministic metrics with a peak at lr = 1e-2, λ·lr = 1e-3 and a little seed noise, for the
    three splits a real run records (validation a little off test, as a held-out split is)."""
    lr = float(getattr(config, "lr", 1e-3))
    wd = float(getattr(config, "weight_decay", 0.0))
    seed = int(getattr(config, "seed", 0))
    distance = (math.log10(lr) + 2) ** 2 + 0.5 * (math.log10(lr * wd + 1e-12) + 3) ** 2 / 10
    acc = 0.9 * math.exp(-distance / 4) + 0.003 * (seed % 3)
    loss = 2.3 * (1 - acc) + 0.05
    val_acc = acc - 0.002 * ((seed + 1) % 2)
    return {"train_loss": loss * 0.9, "train_acc": min(1.0, acc + 0.02), "val_loss": 2.3 * (1 - val_acc) + 0.05,
            "val_acc": val_acc, "test_loss": loss, "test_acc": acc, "weight_norm": 10 / (1 + 100 * lr * wd),
            "wall_s": 0.0}


@dataclass
class FakeTrainer:
    """Deterministic fake trainers following the ``decaylab.train`` contract.

    ``delay``: seconds to sleep per call (imitates training); ``log``: a file that gets one line
    ``pid key`` per trained config, appended when the call starts; ``fail_lrs``: a call with a
    config whose ``lr`` is one of these raises ``ValueError``; ``interrupt_after``: raise ``KeyboardInterrupt``
    on the call after this many calls (in this process); ``points``: curve points per run.
    """

    delay: float = 0.0
    log: str | None = None
    fail_lrs: tuple[float, ...] = ()
    interrupt_after: int | None = None
    points: int = 3
    calls: int = 0

    def _begin(self, configs: Sequence[Any]) -> None:
        if self.interrupt_after is not None and self.calls >= self.interrupt_after:
            raise KeyboardInterrupt
        self.calls += 1
        if self.log:
            text = "".join(f"{os.getpid()} {c.key()}\n" for c in configs)
            fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        for c in configs:
            if getattr(c, "lr", None) in self.fail_lrs:
                raise ValueError(f"fake failure for lr={c.lr}")
        if self.delay:
            time.sleep(self.delay)

    def _result(self, config: Any) -> FakeResult:
        final = fake_metrics(config)
        curves = []
        for i in range(1, self.points + 1):
            frac = i / self.points
            curves.append({"step": 10 * i, "epoch": frac * float(getattr(config, "epochs", 1)),
                           "lr": float(getattr(config, "lr", 1e-3)) * (1 - frac),
                           "train_loss": final["train_loss"] / frac, "val_loss": final["val_loss"] / frac,
                           "test_loss": final["test_loss"] / frac,
                           "test_acc": final["test_acc"] * frac, "weight_norm": final["weight_norm"],
                           "effective_lr": 0.0})
        return FakeResult(config, final, curves)

    def train(self, config: Any, *, data: Any = None, progress: Any = None) -> FakeResult:
        """One run, as ``decaylab.train.train``."""
        self._begin([config])
        return self._result(config)

    def train_stacked(self, configs: Sequence[Any], *, data: Any = None, progress: Any = None) -> list[FakeResult]:
        """Several runs at once, as ``decaylab.train.train_stacked``."""
        configs = list(configs)
        self._begin(configs)
        return [self._result(c) for c in configs]
