"""The dataset registry: ``load(name, root=None, **options)`` and ``available()``.

>>> [info.name for info in available() if info.offline]
['mnist1d', 'digits', 'pystdlib-text']
>>> load("cifar-10")
Traceback (most recent call last):
    ...
ValueError: unknown dataset 'cifar-10'; choose one of: mnist1d, digits, ... (did you mean 'cifar10'?)
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .cifar import load_cifar10, load_cifar100
from .core import TensorData, TextData
from .embedded import load_digits, load_mnist1d, load_pystdlib_text
from .hf_text import HF_CORPORA, load_hf_text

__all__ = ["DatasetInfo", "available", "load", "register"]


@dataclass(frozen=True)
class DatasetInfo:
    """One registered dataset: its name, ``kind`` (``"classification"`` or ``"text"``), whether it
    loads with no network on a fresh machine (``offline``), and a one-line description."""

    name: str
    kind: str
    offline: bool
    description: str

    def __str__(self) -> str:
        where = "offline " if self.offline else "download"
        return f"{self.name:<14} {self.kind:<14} {where}  {self.description}"


_REGISTRY: dict[str, tuple[DatasetInfo, Callable[..., TensorData | TextData]]] = {}


def register(
    name: str,
    loader: Callable[..., TensorData | TextData],
    *,
    kind: str,
    offline: bool,
    description: str,
    overwrite: bool = False,
) -> None:
    """Add a dataset to the registry: ``loader(root=..., **options)`` returns its data.

    ``name`` is matched case-insensitively by :func:`load`; re-registering a name needs
    ``overwrite=True``.
    """
    key = name.lower()
    if not key or key != key.strip():
        raise ValueError(f"name must be a non-empty name without surrounding spaces, got {name!r}")
    if kind not in ("classification", "text"):
        raise ValueError(f"kind must be 'classification' or 'text', got {kind!r}")
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"dataset {key!r} is already registered; pass overwrite=True to replace it")
    if "root" not in inspect.signature(loader).parameters:
        raise ValueError(f"loader for {key!r} must accept a 'root' argument")
    _REGISTRY[key] = (DatasetInfo(key, kind, bool(offline), description), loader)


def available() -> list[DatasetInfo]:
    """Every registered dataset, embedded (offline) ones first, with a one-line description.

    ``print(*available(), sep="\\n")`` prints a table.
    """
    return [info for info, _ in _REGISTRY.values()]


def _options_of(loader: Callable[..., Any]) -> list[str] | None:
    """The keyword options a loader takes besides ``root`` (None if it takes ``**kwargs``)."""
    params = inspect.signature(loader).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name != "root"
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def load(name: str, root: str | os.PathLike[str] | None = None, **options: Any) -> TensorData | TextData:
    """Load the dataset ``name`` (see :func:`available`) as :class:`TensorData` or :class:`TextData`.

    ``root`` is where data files are kept and looked for (default :func:`cache_dir`: ``$DECAYLAB_DATA``
    or ``~/.cache/decaylab``); ``options`` go to the dataset's loader (e.g. ``seed=`` for
    ``mnist1d`` and ``digits``, ``max_bytes=`` for text, ``download=`` for CIFAR and the Hub corpora).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.lower()
    if key not in _REGISTRY:
        names = list(_REGISTRY)
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(names)}{hint}")
    _, loader = _REGISTRY[key]
    allowed = _options_of(loader)
    if allowed is not None:
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise TypeError(f"dataset {key!r} takes no option(s) {unknown}; its options are {allowed}")
    return loader(root=root, **options)


register("mnist1d", load_mnist1d, kind="classification", offline=True,
         description="MNIST-1D: 4000 train / 1000 test 1-D signals of length 40, 10 classes, generated locally "
                     "(mnist1d package)")
register("digits", load_digits, kind="classification", offline=True,
         description="scikit-learn's 8x8 digits: 1,797 images as 64 standardized features, 10 classes, "
                     "seeded 70/30 split")
register("pystdlib-text", load_pystdlib_text, kind="text", offline=True,
         description="the Python standard library's .py sources as bytes (2 MB by default); exact bytes depend "
                     "on the Python version")
register("cifar10", load_cifar10, kind="classification", offline=False,
         description="CIFAR-10: 50,000 train / 10,000 test 3x32x32 images, 10 classes; md5-verified python "
                     "archive, downloaded when missing")
register("cifar100", load_cifar100, kind="classification", offline=False,
         description="CIFAR-100: 50,000 train / 10,000 test 3x32x32 images, 100 (or 20 coarse) classes; "
                     "md5-verified python archive, downloaded when missing")
for _name, _corpus in HF_CORPORA.items():
    register(_name, functools.partial(load_hf_text, _name), kind="text", offline=False,
             description=f"{_corpus.description}; streamed from the Hub when missing, else a local copy")
