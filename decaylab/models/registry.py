"""Build a model by name: ``build("resnet20-nobn")``; the names a sweep spec may use.

=========================  =========================================  ==============  ==============
name                       builds                                     parameters      input
=========================  =========================================  ==============  ==============
``mlp``                    ``MLP()`` — MNIST-1D MLP                   15,210          ``(B, 40)``
``mlp-bn``                 ``MLP(norm="bn")`` — with BatchNorm        15,410          ``(B, 40)``
``mlp-deep``               ``MLP(hidden=(32,) * 8)`` — deep, thin     9,034           ``(B, 40)``
``mlp-deep-bn``            the same with BatchNorm                    9,290           ``(B, 40)``
``cnn1d``                  ``CNN1d()`` — MNIST-1D ConvBase            5,210           ``(B, 40)``
``resnet20``               ``resnet20(norm="bn")``                    269,722         ``(B, 3, H, W)``
``resnet20-nobn``          ``resnet20(norm="none")``                  268,346         ``(B, 3, H, W)``
``preact-resnet18``        ``preact_resnet18(norm="bn")``             11,172,176      ``(B, 3, H, W)``
``preact-resnet18-nobn``   ``preact_resnet18(norm="none")``           11,164,362      ``(B, 3, H, W)``
``vgg16``                  ``vgg16()`` — no BatchNorm                 14,719,818      ``(B, 3, 32, 32)``
``gpt-micro``              ``GPT(GPTConfig.micro(**kwargs))``         1,844,928       ``(B, T ≤ 128)`` ids
``gpt-nano``               ``GPT(GPTConfig.nano(**kwargs))``          37,024          ``(B, T ≤ 128)`` ids
=========================  =========================================  ==============  ==============

(parameters for the defaults: 10 classes, vocab 256.) Keyword arguments go to the builder
(``num_classes=100``, ``hidden=(256,)``; for ``gpt-micro`` and ``gpt-nano`` any :class:`GPTConfig` field).
``gpt-nano`` (2 layers, 2 heads, width 32, written-out attention) is the GPT that trains thousands of
steps on 2 CPU cores in a minute: the reproductions ``undertraining`` and ``bf16`` use it. A keyword
that the name already fixes (``norm`` for the ResNets) may not be given a different value.
``mlp-deep`` (8 hidden layers of 32, default init) has gradients of many scales (the largest layer's
gradient RMS ~100× the smallest at init); its BN twin does not (~3×): the small-scale stand-in for
Zhuang et al.'s ResNets without and with BN (reproduction ``scale-free``).
The vision and MNIST-1D models return logits; the GPT returns ``(logits, loss)``.

>>> build("resnet20-nobn", num_classes=100).linear.out_features
100
>>> build("resnet20-nobn", norm="bn")
Traceback (most recent call last):
...
ValueError: 'resnet20-nobn' fixes norm='none'; for norm='bn' build 'resnet20'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from decaylab.models.gpt import GPT, GPTConfig
from decaylab.models.mnist1d import MLP, CNN1d
from decaylab.models.resnet import preact_resnet18, resnet20
from decaylab.models.vgg import vgg16

__all__ = ["INPUTS", "available", "build", "data_sizes", "num_parameters", "takes"]


def _gpt(name: str, preset: Callable[..., GPTConfig]) -> Callable[..., GPT]:
    """The builder of a GPT preset (``GPTConfig.micro``, ``GPTConfig.nano``): any GPTConfig field by keyword."""
    def build_gpt(**kwargs: Any) -> GPT:
        unknown = sorted(set(kwargs) - set(GPTConfig.field_names()))
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {unknown} for {name!r}; allowed: {GPTConfig.field_names()}")
        return GPT(preset(**kwargs))

    return build_gpt


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    fixed: dict[str, Any]  # keywords the name fixes
    takes: str  # what it reads: a key of INPUTS


INPUTS: dict[str, str] = {
    "features": "a flat vector per example (any input shape, flattened): in_features, num_classes",
    "signal": "a 1-d signal of shape (L,) or (1, L): in_length, num_classes",
    "image": "images (B, 3, H, W): num_classes",
    "tokens": "token ids (B, T ≤ block_size): vocab_size, block_size (a language model)",
}
"""What a model reads, and the sizes :func:`data_sizes` gives its builder for it."""

_REGISTRY: dict[str, _Entry] = {
    "mlp": _Entry(MLP, {}, "features"),
    "mlp-bn": _Entry(MLP, {"norm": "bn"}, "features"),
    "mlp-deep": _Entry(MLP, {"hidden": (32,) * 8}, "features"),
    "mlp-deep-bn": _Entry(MLP, {"hidden": (32,) * 8, "norm": "bn"}, "features"),
    "cnn1d": _Entry(CNN1d, {}, "signal"),
    "resnet20": _Entry(resnet20, {"norm": "bn"}, "image"),
    "resnet20-nobn": _Entry(resnet20, {"norm": "none"}, "image"),
    "preact-resnet18": _Entry(preact_resnet18, {"norm": "bn"}, "image"),
    "preact-resnet18-nobn": _Entry(preact_resnet18, {"norm": "none"}, "image"),
    "vgg16": _Entry(vgg16, {"norm": "none"}, "image"),
    "gpt-micro": _Entry(_gpt("gpt-micro", GPTConfig.micro), {}, "tokens"),
    "gpt-nano": _Entry(_gpt("gpt-nano", GPTConfig.nano), {}, "tokens"),
}


def available() -> list[str]:
    """The names :func:`build` accepts, in table order."""
    return list(_REGISTRY)


def build(name: str, **kwargs: Any) -> nn.Module:
    """A freshly initialized model (from torch's global RNG: seed it first for reproducible inits).

    Raises:
        ValueError: ``name`` is not one of :func:`available` (the message lists them), or a
            keyword contradicts what the name fixes.
        TypeError: a keyword the builder does not take.
    """
    entry = _entry(name)
    builder, fixed = entry.builder, entry.fixed
    for key, value in fixed.items():
        if key in kwargs and kwargs[key] != value:
            other = [n for n, e in _REGISTRY.items() if e.builder is builder and e.fixed.get(key) == kwargs[key]]
            hint = f"; for {key}={kwargs[key]!r} build {other[0]!r}" if other else ""
            raise ValueError(f"{name!r} fixes {key}={value!r}{hint}")
    return builder(**{**kwargs, **fixed})


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; available: {available()}")
    return _REGISTRY[name]


def takes(name: str) -> str:
    """What model ``name`` reads, a key of :data:`INPUTS` (``"tokens"``: a language model).

    >>> takes("cnn1d"), takes("gpt-nano")
    ('signal', 'tokens')
    """
    return _entry(name).takes


def data_sizes(name: str, *, input_shape: tuple[int, ...] = (), num_classes: int | None = None,
               vocab_size: int | None = None, block_size: int | None = None,
               dataset: str = "the data") -> dict[str, Any]:
    """The keywords :func:`build` needs for model ``name`` on data of these sizes (``input_shape`` of
    one example, the number of classes; a vocabulary and context length for a language model).
    ``ValueError`` names the model, the dataset and what it reads when the shape does not fit.

    >>> data_sizes("mlp", input_shape=(1, 40), num_classes=10)
    {'in_features': 40, 'num_classes': 10}
    >>> data_sizes("cnn1d", input_shape=(40,), num_classes=10)
    {'in_length': 40, 'num_classes': 10}
    """
    kind = takes(name)
    if kind == "tokens":
        return {"vocab_size": vocab_size, "block_size": block_size}
    if kind == "features":
        return {"in_features": math.prod(input_shape), "num_classes": num_classes}
    if kind == "signal":
        shape = tuple(input_shape)
        if not shape or len(shape) > 2 or (len(shape) == 2 and shape[0] != 1):
            raise ValueError(f"model {name!r} takes {INPUTS[kind].split(':')[0]}; dataset {dataset!r} has {shape}")
        return {"in_length": shape[-1], "num_classes": num_classes}
    return {"num_classes": num_classes}


def num_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter entries, each shared (tied) tensor counted once.

    >>> num_parameters(build("resnet20"))
    269722
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
