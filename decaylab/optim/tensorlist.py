"""A list of tensors that does arithmetic with ``torch._foreach_*`` kernels.

It lets the foreach path run the *same* rule and direction functions as the per-tensor
reference path: ``a * b + c`` on two TensorLists is a handful of multi-tensor kernels instead
of a Python loop. Only the operations the optimizer's functions use are defined.
"""
from __future__ import annotations

from collections.abc import Sequence
from numbers import Number

import torch
from torch import Tensor


class TensorList:
    """Elementwise arithmetic over a list of tensors (out of place, foreach kernels)."""

    __slots__ = ("items",)

    def __init__(self, items: Sequence[Tensor]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def _other(self, other):
        """Normalize ``other`` to something foreach kernels accept next to ``self.items``."""
        if isinstance(other, TensorList):
            return other.items
        if isinstance(other, Tensor) and other.dim() > 0:
            # A per-model hyperparameter of shape (K, 1, ...): the same tensor for every item.
            return [other] * len(self.items)
        return other

    def __add__(self, other):
        if isinstance(other, Number) or (isinstance(other, Tensor) and other.dim() == 0):
            return TensorList(torch._foreach_add(self.items, other))
        return TensorList(torch._foreach_add(self.items, self._other(other)))

    __radd__ = __add__

    def __sub__(self, other):
        if isinstance(other, Number):
            return TensorList(torch._foreach_add(self.items, -other))
        if isinstance(other, Tensor) and other.dim() == 0:
            return TensorList(torch._foreach_sub(self.items, [other] * len(self.items)))
        return TensorList(torch._foreach_sub(self.items, self._other(other)))

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        return TensorList(torch._foreach_mul(self.items, self._other(other)))

    __rmul__ = __mul__

    def __truediv__(self, other):
        return TensorList(torch._foreach_div(self.items, self._other(other)))

    def __rtruediv__(self, other):
        return TensorList(torch._foreach_reciprocal(self.items)) * other

    def __neg__(self):
        return TensorList(torch._foreach_neg(self.items))

    def sqrt(self):
        return TensorList(torch._foreach_sqrt(self.items))

    def maximum(self, other):
        return TensorList(torch._foreach_maximum(self.items, self._other(other)))

    def lerp(self, end, weight):
        if isinstance(weight, TensorList):
            weight = weight.items
        elif isinstance(weight, Tensor):
            weight = [weight] * len(self.items)
        return TensorList(torch._foreach_lerp(self.items, self._other(end), weight))

    def __rpow__(self, base: float):
        return TensorList(torch._foreach_pow(base, self.items))

    def ge(self, value: float):
        """A 0/1 mask of ``x ≥ value`` in the items' dtype: ``min(sign(x − value) + 1, 1)``."""
        shifted = self - value if value else self
        return TensorList(torch._foreach_clamp_max(torch._foreach_add(torch._foreach_sign(shifted.items), 1), 1))

    def clamp_max(self, value: float):
        return TensorList(torch._foreach_clamp_max(self.items, value))

    def float(self):
        return TensorList([t.float() for t in self.items])

    def to(self, dtype: torch.dtype):
        return TensorList([t.to(dtype) for t in self.items])

    def __getattr__(self, name: str):
        """Any other Tensor method, item by item (a user's rule may call ``sign``, ``abs``, ``clamp_min``,
        …): TensorList arguments are taken item by item, anything else is passed to every item."""
        if name.startswith("_") or not callable(getattr(Tensor, name, None)):
            raise AttributeError(f"TensorList has no attribute {name!r}")

        def method(*args, **kwargs):
            n = len(self.items)
            pick = lambda a, i: a.items[i] if isinstance(a, TensorList) else a  # noqa: E731
            return TensorList([getattr(t, name)(*(pick(a, i) for a in args), **{k: pick(v, i) for k, v in
                                                                              kwargs.items()})
                               for i, t in zip(range(n), self.items, strict=True)])

        return method

    def copy_into(self, targets: Sequence[Tensor]) -> None:
        torch._foreach_copy_(list(targets), self.items)
