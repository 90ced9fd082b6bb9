"""The parts of the decaylab.train contract that decaylab.sweep relies on, and a stand-in for them.

Sweep tests use fake trainers (decaylab.sweep.testing.FakeTrainer) and :func:`config_class`: the
real ``decaylab.train.TrainConfig`` when it can be imported, else :class:`ContractConfig`, a
stand-in written from the contract (so the sweep can be tested while train is being written).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import pytest


@dataclass(frozen=True)
class ContractConfig:
    dataset: str = "mnist1d"
    model: str = "mlp"
    optimizer: str = "adam"
    decay: str = "decoupled"
    decay_scale: str = "lr"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    epochs: float = 10
    steps: int | None = None
    batch_size: int = 128
    schedule: str = "cosine"
    warmup_steps: int = 0
    seed: int = 0
    no_decay_bias_norm: bool = True
    eval_every: int = 0
    precision: str = "fp32"
    grad_clip: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ContractConfig:
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def key(self) -> str:
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def stack_key(self) -> tuple:
        return tuple((k, v) for k, v in sorted(self.to_dict().items()) if k not in ("lr", "weight_decay", "seed"))


def config_class() -> type:
    try:
        from decaylab.train import TrainConfig
    except ImportError:
        return ContractConfig
    return TrainConfig


def test_config_contract():
    cls = config_class()
    a = cls(lr=0.01, weight_decay=0.1, seed=1)
    b = cls(lr=0.02, weight_decay=0.2, seed=2)
    assert a.key() == cls(lr=0.01, weight_decay=0.1, seed=1).key() != b.key()
    assert a.stack_key() == b.stack_key() != cls(decay="l2").stack_key()
    assert cls.from_dict(json.loads(json.dumps(a.to_dict()))).key() == a.key()
    with pytest.raises(TypeError):
        cls(learning_rate=0.1)
