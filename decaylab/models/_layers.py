"""Small helpers shared by the model files: argument checks and the optional 2-d normalization."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

#: What a ``norm`` argument may be: BatchNorm, or no normalization at all.
NORMS = ("bn", "none")


def check_choice(argument: str, value: object, allowed: Sequence[str]) -> None:
    """Raise ``ValueError`` naming ``argument`` and the allowed values unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f"{argument} must be one of {list(allowed)}, got {value!r}")


def norm2d(norm: str, channels: int) -> nn.Module:
    """``nn.BatchNorm2d(channels)`` for ``norm="bn"``, a parameter-free ``nn.Identity`` for ``"none"``."""
    check_choice("norm", norm, NORMS)
    return nn.BatchNorm2d(channels) if norm == "bn" else nn.Identity()
